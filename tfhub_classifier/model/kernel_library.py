"""The suite's own C++ kernels (model/kernels/), compiled for this CPU on first use, kept, and loaded into TensorFlow.

TensorFlow's pip package ships the headers and the flags to build op libraries against it
(tf.sysconfig), as torch.utils.cpp_extension does for PyTorch; TensorFlow itself has no helper that
compiles one at run time, so this does: the system's C++ compiler (CXX, else g++) builds the library
with -march=native, and it is kept in the cache folder under a name hashed from the source, TensorFlow's
version and flags, the compiler and this CPU (its model and flags as /proc/cpuinfo gives them), so a
copied cache or another CPU doesn't load a library built for something else. A library being written
has a name of its own until it is renamed into place, so processes compiling at once don't mix. A
compile the compiler failed leaves its reason beside where the library would be, and later processes
that find no library give that reason without compiling again for RETRY_AFTER_S.
"""
import functools
import hashlib
import os
import platform
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time

from tfhub_classifier import cli, files
from tfhub_classifier.runtime import tf

SOURCES = os.path.join(os.path.dirname(__file__), "kernels")
CACHE_VARIABLE = "TFHUB_CLASSIFIER_CACHE"  # the cache folder; else $XDG_CACHE_HOME/tfhub_classifier, else ~/.cache/...
COMPILE_TIMEOUT_S = 600
CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU part")  # x86's and Arm's /proc/cpuinfo
FIX = "set CXX to a C++17 compiler (apt-get install g++)"
RETRY_AFTER_S = 24 * 3600  # a failed build is not tried again sooner (each try costs seconds of compiling)


class Unavailable(Exception):
    """The library could not be compiled or loaded here; the message says why and what to do."""


class BuildFailed(Unavailable):
    """The compiler ran and reported errors: what a retry would repeat, so it is kept for RETRY_AFTER_S."""


def cache_folder():
    if os.environ.get(CACHE_VARIABLE):
        return os.environ[CACHE_VARIABLE]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfhub_classifier")


def compiler():
    """The compiler's command (CXX, which may carry a launcher or flags, e.g. "ccache g++"; else g++)."""
    return shlex.split(os.environ.get("CXX", "")) or ["g++"]


def compile_command(source, output):
    return [*compiler(), "-shared", "-fPIC", "-O3", "-march=native", "-w", source, "-o", output,
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def library_path(name):
    """Where the library of kernels/NAME.cc for this TensorFlow, compiler and CPU is kept."""
    source = os.path.join(SOURCES, f"{name}.cc")
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read())
    for part in (tf.__version__, *compile_command(source, ""), _compiler_version(tuple(compiler())),
                 platform.machine(), _cpu()):
        digest.update(part.encode() + b"\0")
    return os.path.join(cache_folder(), "kernels", f"{name}-{digest.hexdigest()[:16]}.so")


@functools.cache
def _compiler_version(command):
    try:
        return subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def _cpu():
    """This CPU as -march=native sees it: the first of each CPU_FIELDS line of /proc/cpuinfo."""
    seen = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                field, _, value = line.partition(":")
                if field.strip() in CPU_FIELDS:
                    seen.setdefault(field.strip(), value.strip())
    except OSError:
        pass
    return repr(sorted(seen.items()))


_loaded = {}  # name: the library, or the Unavailable its load raised (not tried again in this process)


def load(name, log=print):
    """The op library of kernels/NAME.cc (tf.load_op_library's module), compiled once for this CPU and
    kept; raises Unavailable, saying why, if it can't be compiled or loaded. Tried once a process:
    TensorFlow registers a library's ops for the whole process, and a second copy's would clash."""
    if name not in _loaded:
        try:
            _loaded[name] = _load(name, log)
        except Unavailable as error:
            _loaded[name] = error
        except (OSError, ValueError) as error:  # e.g. CXX that isn't a command line, a source file gone
            _loaded[name] = Unavailable(f"its kernel could not be built ({cli.error_summary(error)}): {FIX}")
    if isinstance(_loaded[name], Unavailable):
        raise Unavailable(str(_loaded[name]))
    return _loaded[name]


def _owned(path):
    """Whether path and its folder belong to this user and no one else can write them: a kept library
    that someone else could replace would run their code in every process that loads it."""
    if not hasattr(os, "getuid"):  # no owners to compare (Windows)
        return True
    try:
        infos = [os.stat(target) for target in (path, os.path.dirname(path))]
    except OSError:
        return False
    return all(info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) for info in infos)


def _load(name, log):
    path = library_path(name)
    own_folder = True
    if os.path.isfile(path):
        own_folder = _owned(path)
        if not own_folder:
            log(f"note: {path} is not loaded: another user owns it or its folder, or can write them; compiling "
                f"the {name} kernel for this run alone (set {CACHE_VARIABLE} to a folder only you can write)")
        else:
            try:
                return tf.load_op_library(path)
            except Exception as error:  # noqa: BLE001  a damaged or foreign file: build it again
                log(f"note: {path} could not be loaded ({cli.error_summary(error)}); compiling it again")
    failed = f"{path}.failed"
    try:
        if time.time() - os.path.getmtime(failed) < RETRY_AFTER_S:
            with open(failed, encoding="utf-8") as f:
                raise Unavailable(f"{f.read().strip()} (an earlier build's; delete {failed} to try again)")
    except OSError:  # no failed build to remember, or its note can't be read
        pass
    try:
        path, scratch = _compiled(name, path, log, own_folder)
    except BuildFailed as error:
        try:
            files.write_bytes(failed, str(error).encode())
        except OSError:  # a cache that can't be written: the next process tries again
            pass
        raise
    try:
        return tf.load_op_library(path)
    except Exception as error:  # noqa: BLE001  e.g. a compiler whose C++ library TensorFlow's doesn't match
        os.remove(path)
        raise Unavailable(f"{shlex.join(compiler())} built its kernel, but TensorFlow can't load it "
                          f"({cli.error_summary(error)}): {FIX}") from None
    finally:
        if scratch:  # the library stays mapped once loaded
            shutil.rmtree(scratch, ignore_errors=True)


def _compiled(name, path, log, own_folder=True):
    """(path, None) once kernels/NAME.cc is compiled there; (a path in a scratch folder, that folder) if
    path's folder can't be written or (own_folder false) isn't this user's alone."""
    command = compiler()
    if shutil.which(command[0]) is None:
        raise Unavailable(f"no C++ compiler '{command[0]}' to build its kernel: install g++ (apt-get install g++) "
                          "or set CXX to one")
    folder, scratch = os.path.dirname(path), None
    unusable = None if own_folder else "not this user's alone"  # why the cache folder can't keep the library
    if unusable is None:
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            files.remove_stale_partials(folder)
            partial = f"{path}.{secrets.token_hex(6)}.partial"
            open(partial, "xb").close()  # the folder can be written: the compiler's output will be kept
            log(f"Compiling the {name} kernel for this CPU (once; kept in {folder}) ...")
        except OSError as error:
            unusable = error.strerror
    if unusable is not None:
        scratch = tempfile.mkdtemp(prefix="tfhub_classifier_kernels_")
        path = os.path.join(scratch, os.path.basename(path))
        partial = f"{path}.partial"
        log(f"Compiling the {name} kernel for this CPU: {folder} can't be used ({unusable}), so it is "
            f"compiled again each run (set {CACHE_VARIABLE} to a folder only you can write) ...")
    try:
        done = subprocess.run(compile_command(os.path.join(SOURCES, f"{name}.cc"), partial), capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "error:" in line] or done.stderr.splitlines()
            raise BuildFailed(f"{shlex.join(command)} could not compile its kernel "
                              f"({(errors or ['no message'])[0][:200]}): {FIX}")
        os.chmod(partial, 0o755)  # whatever the umask: a library others could write would not be loaded again
        os.replace(partial, path)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{shlex.join(command)} took over {COMPILE_TIMEOUT_S} s to compile its kernel: {FIX}") \
            from None
    except BaseException:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path, scratch


