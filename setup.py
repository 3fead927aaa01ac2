"""Build plugqdisc._plugqdisc from csrc/ against libnl, with flags from pkg-config.

Also the one home of building C against libnl: core_sources() (every csrc/*.c but the
glue, so a file added to csrc/ needs no list edit) and compile_c(), which the C tests
(tests/test_errors_kernel.py) and the benchmark's baselines (bench/run.py) use. Importing
this file builds nothing: setup() runs only as a script (setuptools runs it as one).
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
LIBNL = ["libnl-3.0", "libnl-route-3.0", "libnl-genl-3.0", "libnl-cli-3.0"]
#: The only C file that knows Python; the rest of csrc/ is the core.
GLUE = "module.c"
INSTALL = (
    "Install them and build again:\n"
    "  Debian/Ubuntu: apt-get install libnl-3-dev libnl-route-3-dev libnl-genl-3-dev "
    "libnl-cli-3-dev pkg-config\n"
    "  Fedora:        dnf install libnl3-devel pkgconf-pkg-config"
)


def core_sources(root=HERE):
    """The C core's sources, relative to ROOT ("csrc/dump.c", ...): every csrc/*.c but the
    glue, sorted."""
    names = sorted(n for n in os.listdir(os.path.join(root, "csrc"))
                   if n.endswith(".c") and n != GLUE)
    return [os.path.join("csrc", n) for n in names]


def core_headers(root=HERE):
    return sorted(os.path.join("csrc", n) for n in os.listdir(os.path.join(root, "csrc"))
                  if n.endswith(".h"))


def libnl_flags():
    """Compile and link flags for libnl, or stop the build with one clear message."""
    try:
        import pkgconfig
    except ImportError:
        sys.exit("plugqdisc: the Python package 'pkgconfig' is needed to build: pip install pkgconfig")
    try:
        missing = [name for name in LIBNL if not pkgconfig.exists(name)]
    except OSError:  # pkgconfig raises it (EnvironmentError) when the pkg-config program is missing
        missing = None
    if missing is None:
        sys.exit("plugqdisc: the pkg-config program was not found; it is needed to find libnl.\n" + INSTALL)
    if missing:
        sys.exit("plugqdisc: pkg-config cannot find %s (the libnl development files).\n%s"
                 % (", ".join(missing), INSTALL))
    return pkgconfig.parse(" ".join(LIBNL))


# Bind every symbol at load: the guardian (csrc/guard.c) must never enter the lazy binder,
# which touches the thread-local storage that the guardian may not use.
LINK_ARGS = ["-Wl,-z,now"]


def compile_c(sources, out, args=()):
    """Compile and link SOURCES (paths) into OUT with the C compiler (cc, or $CC), against
    libnl as the extension is: ARGS go before the sources ("-shared", "-I", ...). Returns
    OUT; a failure raises RuntimeError with the compiler's output."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("plugqdisc: no C compiler (cc) found: apt-get install gcc (dnf install gcc)")
    flags = libnl_flags()
    link = (["-I" + d for d in flags["include_dirs"]] + ["-L" + d for d in flags["library_dirs"]]
            + ["-D%s=%s" % (k, v) if v is not None else "-D" + k
               for k, v in flags["define_macros"]]
            + ["-l" + lib for lib in flags["libraries"]])
    cmd = [cc, *args, "-o", out, *sources, *link, *LINK_ARGS]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed:\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    return out


if __name__ == "__main__":
    flags = libnl_flags()
    setup(
        ext_modules=[
            Extension(
                "plugqdisc._plugqdisc",
                sources=[os.path.join("csrc", GLUE)] + core_sources(),
                depends=core_headers(),
                include_dirs=["csrc"] + list(flags["include_dirs"]),
                library_dirs=list(flags["library_dirs"]),
                libraries=list(flags["libraries"]),
                define_macros=list(flags["define_macros"]),
                extra_compile_args=["-std=gnu11", "-Wall", "-Wextra",
                                    "-Wno-missing-field-initializers"],
                extra_link_args=LINK_ARGS,
                # The stable ABI (module.c defines Py_LIMITED_API 3.10): one wheel,
                # tagged abi3, serves CPython 3.10 and later.
                py_limited_api=True,
            )
        ],
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )
