"""The suite's own C++ kernels (model/kernels/), compiled for this CPU on first use, kept, and loaded into TensorFlow.

TensorFlow's pip package ships the headers and the flags to build op libraries against it
(tf.sysconfig), as torch.utils.cpp_extension does for PyTorch; TensorFlow itself has no helper that
compiles one at run time, so this does: the system's C++ compiler (CXX, else g++) builds the library
with -march=native, and it is kept in the cache folder under a name hashed from the source, TensorFlow's
version and flags, the compiler and this CPU's flags, so a copied cache or another CPU never loads a
library built for something else. A library being written has a name of its own until it is renamed
into place, so processes compiling at once don't mix.
"""
import functools
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import tempfile

from tfhub_classifier import files, hardware
from tfhub_classifier.runtime import tf

SOURCES = os.path.join(os.path.dirname(__file__), "kernels")
CACHE_VARIABLE = "TFHUB_CLASSIFIER_CACHE"  # the cache folder; else $XDG_CACHE_HOME/tfhub_classifier, else ~/.cache/...
COMPILE_TIMEOUT_S = 600
STALE_PARTIAL_S = 3600  # a library being written is younger: another process may be compiling it


class Unavailable(Exception):
    """The library could not be compiled or loaded here; the message says why and what to do."""


def cache_folder():
    if os.environ.get(CACHE_VARIABLE):
        return os.environ[CACHE_VARIABLE]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfhub_classifier")


def compile_command(source, output):
    compiler = os.environ.get("CXX", "g++")
    return [compiler, "-shared", "-fPIC", "-O3", "-march=native", "-w", source, "-o", output,
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def library_path(name):
    """Where the library of kernels/NAME.cc for this TensorFlow, compiler and CPU is kept."""
    source = os.path.join(SOURCES, f"{name}.cc")
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read())
    compiler = os.environ.get("CXX", "g++")
    for part in (tf.__version__, *compile_command(source, ""), _compiler_version(compiler), platform.machine(),
                 *sorted(hardware.cpu_flags())):
        digest.update(part.encode() + b"\0")
    return os.path.join(cache_folder(), "kernels", f"{name}-{digest.hexdigest()[:16]}.so")


@functools.cache
def _compiler_version(compiler):
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


_loaded = {}


def load(name, log=print):
    """The op library of kernels/NAME.cc (tf.load_op_library's module), compiled once for this CPU and
    kept; raises Unavailable, saying why, if it can't be compiled or loaded. Loaded once a process."""
    if name not in _loaded:
        path = library_path(name)
        if os.path.isfile(path):
            try:
                _loaded[name] = tf.load_op_library(path)
                return _loaded[name]
            except Exception as error:  # noqa: BLE001  a damaged or foreign file: build it again
                log(f"note: {path} could not be loaded ({_first_line(error)}); compiling it again")
        _loaded[name] = tf.load_op_library(_compiled(name, path, log))
    return _loaded[name]


def _compiled(name, path, log):
    """path, once kernels/NAME.cc is compiled there (or into a scratch folder if path's can't be written)."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise Unavailable(f"no C++ compiler '{compiler}' to build its kernel: install g++ (apt-get install g++) "
                          "or set CXX to one")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        files.remove_stale_partials(folder, STALE_PARTIAL_S)
        partial = f"{path}.{secrets.token_hex(6)}.partial"
    except OSError as error:
        log(f"note: {folder} can't be written ({error.strerror}); the kernel is compiled again each run")
        path = os.path.join(tempfile.mkdtemp(prefix="tfhub_classifier_kernels_"), os.path.basename(path))
        partial = f"{path}.partial"
    log(f"Compiling the {name} kernel for this CPU (once; kept in {os.path.dirname(path)}) ...")
    try:
        done = subprocess.run(compile_command(os.path.join(SOURCES, f"{name}.cc"), partial), capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error:" in line] or done.stderr.splitlines()
            raise Unavailable(f"{compiler} could not compile its kernel: {(errors or ['no message'])[0][:200]}")
        os.replace(partial, path)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{compiler} took over {COMPILE_TIMEOUT_S} s to compile its kernel") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
