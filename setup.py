"""Build the Cython kernels.

* ``-O3`` and never fast-math: the gradient tests and NaN checks need IEEE semantics.
* OpenMP is found by compiling and running a small probe; without it the build still
  works (serial kernels) but warns loudly, and ``fastrnn.openmp_enabled()`` says so.
* No BLAS is linked: the kernels call ``scipy.linalg.cython_blas`` (see fastrnn/kernels/_blas.pyx).
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel num_threads(2) reduction(+:n)
        n += 1;
        printf("%d\\n", n);
        return n == 2 ? 0 : 1;
    }
""")


def openmp_flags():
    """Compile, link and run an OpenMP program; return the flags that made it work, or []."""
    if os.environ.get("FASTRNN_NO_OPENMP", "0") != "0":
        warnings.warn("FASTRNN_NO_OPENMP is set: building serial kernels")
        return []
    flags = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        subprocess.run(cc + flags + [src, "-o", exe], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        subprocess.run([exe], check=True, stdout=subprocess.PIPE)
        return flags
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn("\n" + "*" * 72 + "\nOpenMP probe failed (%s): fastrnn is being built "
                      "WITHOUT OpenMP; its kernels will run on one thread.\n" % exc + "*" * 72)
        return []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


omp = openmp_flags()
debug = os.environ.get("FASTRNN_DEBUG_CYTHON", "0") != "0"
names = ["_openmp", "_blas", "_rnn", "_lstm", "_gru", "_stream"]
extensions = [
    Extension(
        f"fastrnn.kernels.{name}", [f"fastrnn/kernels/{name}.pyx"],
        include_dirs=["include", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=["-O3"] + omp + (["-g", "-O0"] if debug else []),
        extra_link_args=omp,
        depends=["include/fastrnn/activations.h", "include/fastrnn/cpu.h",
                 "include/fastrnn/gemv.h", "include/fastrnn/pool.h", "include/fastrnn/gemm.h", "fastrnn/kernels/_blas.pxd",
                 "fastrnn/kernels/_openmp.pxd", "fastrnn/kernels/_common.pxi"],
    )
    for name in names
]

setup(ext_modules=cythonize(extensions, compiler_directives={
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}))
