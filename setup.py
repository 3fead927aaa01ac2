"""Build plugqdisc._plugqdisc from csrc/ against libnl, with flags from pkg-config."""
import sys

from setuptools import Extension, setup

LIBNL = ["libnl-3.0", "libnl-route-3.0", "libnl-genl-3.0", "libnl-cli-3.0"]
INSTALL = (
    "Install them and build again:\n"
    "  Debian/Ubuntu: apt-get install libnl-3-dev libnl-route-3-dev libnl-genl-3-dev "
    "libnl-cli-3-dev pkg-config\n"
    "  Fedora:        dnf install libnl3-devel pkgconf-pkg-config"
)


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


flags = libnl_flags()
setup(
    ext_modules=[
        Extension(
            "plugqdisc._plugqdisc",
            sources=["csrc/module.c", "csrc/plug_qdisc.c", "csrc/tree.c", "csrc/guard.c",
                     "csrc/dump.c", "csrc/nl.c", "csrc/plan.c", "csrc/plug.c"],
            depends=["csrc/plug_qdisc.h", "csrc/nl.h", "csrc/plan.h", "csrc/plug.h", "csrc/tree.h", "csrc/guard.h", "csrc/sys.h"],
            include_dirs=["csrc"] + list(flags["include_dirs"]),
            library_dirs=list(flags["library_dirs"]),
            libraries=list(flags["libraries"]),
            define_macros=list(flags["define_macros"]),
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            # Bind every symbol at load: the guardian (guard.c) must never enter the lazy
            # binder, which touches the thread-local storage it may not use.
            extra_link_args=["-Wl,-z,now"],
        )
    ],
)
