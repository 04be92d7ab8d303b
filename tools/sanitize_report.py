"""Summarise AddressSanitizer / LeakSanitizer and valgrind logs, attributing each report to
fastrnn's compiled code or to something else (CPython, numpy, OpenBLAS...).

    python tools/sanitize_report.py asan LOG...
    python tools/sanitize_report.py valgrind LOG...

A report counts as fastrnn's when one of its stack frames lies in a fastrnn extension
module (``fastrnn/_<name>.cpython-*.so``) or in its sources (``fastrnn/_<name>.c``,
``include/fastrnn/*.h``). Prints the counts and each fastrnn report in full; exits 1 when
there is any fastrnn report (or any AddressSanitizer error at all: those stop the process).
"""
import re
import sys

OURS = re.compile(r"fastrnn/_\w+\.(?:c|pyx|pxi|cpython[^\s)]*)|include/fastrnn/\w+\.h")


def asan(paths):
    errors, leaks, ours = [], [], []
    for path in paths:
        text = open(path, errors="replace").read()
        # an ASan error report: from its "ERROR: AddressSanitizer" line to the next "=="
        # banner; a leak report: one "Direct/Indirect leak" record per blank-line block
        for m in re.finditer(r"ERROR: AddressSanitizer.*?(?=\n={10,}|\Z)", text, re.S):
            errors.append(m.group(0))
        for m in re.finditer(r"(?:Direct|Indirect) leak of .*?(?=\n\n|\Z)", text, re.S):
            leaks.append(m.group(0))
    ours = [r for r in errors + leaks if OURS.search(r)]
    leaked = sum(int(re.match(r"\w+ leak of (\d+)", r).group(1)) for r in leaks)
    print(f"asan: {len(errors)} error reports; {len(leaks)} leak records ({leaked} bytes) "
          f"of which {sum(1 for r in leaks if OURS.search(r))} through fastrnn code")
    for r in ours:
        print("---- fastrnn report ----\n" + r)
    return 1 if errors or ours else 0


def valgrind(paths):
    records, ours, definite = [], [], []
    for path in paths:
        text = open(path, errors="replace").read()
        # a record: a "==pid== <what>" line followed by its "==pid==    at/by" frames
        blocks = re.split(r"\n==\d+== \n", text)
        for b in blocks:
            head = re.search(r"==\d+== (.+)", b)
            if head is None:
                continue
            what = head.group(1)
            if "definitely lost in loss record" in what:
                definite.append(b)
                records.append(b)
            elif re.match(r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|"
                          r"Syscall param|Mismatched free|Source and destination overlap)", what):
                records.append(b)
    ours = [r for r in records if OURS.search(r)]
    lost = sum(int(re.search(r"([\d,]+) (?:\([\d,]+ direct, [\d,]+ indirect\) )?bytes in",
                             r).group(1).replace(",", "")) for r in definite)
    print(f"valgrind: {len(records) - len(definite)} error records, {len(definite)} "
          f"definitely-lost records ({lost} bytes); through fastrnn code: {len(ours)}")
    for r in ours:
        print("---- fastrnn report ----\n" + r)
    return 1 if ours else 0


if __name__ == "__main__":
    kind, paths = sys.argv[1], sys.argv[2:]
    sys.exit({"asan": asan, "valgrind": valgrind}[kind](paths))
