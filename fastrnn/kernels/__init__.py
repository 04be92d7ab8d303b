"""The compiled kernels (Cython over scipy's BLAS, on fastrnn's thread pool in
_blas) and their runtime: thread counts (_threads, _openmp), the weight guard streams read under (_guard). Only
fastrnn.functional calls the cell kernels; the C headers they share are in include/."""
import sys as _sys


def _preload_cython_blas():
    """Load scipy.linalg.cython_blas without running scipy.linalg's __init__.

    The kernels only need the BLAS function pointers that module exports; importing it
    the ordinary way first imports the whole scipy.linalg package, which is ~0.15 s of
    `import fastrnn` (measured with -X importtime). Any surprise falls back to the
    ordinary import."""
    name = "scipy.linalg.cython_blas"
    if name in _sys.modules or "scipy.linalg" in _sys.modules:
        return
    import importlib.machinery
    import importlib.util
    import os
    try:
        spec = importlib.util.find_spec("scipy")
        folder = os.path.join(spec.submodule_search_locations[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.exists(path):
                break
        else:
            return
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        mspec = importlib.util.spec_from_file_location(name, path, loader=loader)
        module = importlib.util.module_from_spec(mspec)
        _sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except BaseException:
            del _sys.modules[name]
            raise
    except Exception:
        return
    _sys.meta_path.insert(0, _LinkCythonBlas())


class _LinkCythonBlas:
    """One-shot import hook: when scipy.linalg is imported later, set its ``cython_blas``
    attribute to the module loaded above, as an ordinary import would have."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "scipy.linalg":
            return None
        import importlib.util
        _sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_link(module):
            exec_module(module)
            blas = _sys.modules.get("scipy.linalg.cython_blas")
            if blas is not None and not hasattr(module, "cython_blas"):
                module.cython_blas = blas

        spec.loader.exec_module = exec_and_link
        return spec


_preload_cython_blas()
