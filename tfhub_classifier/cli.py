"""How every script ends: a result, or a one-line error that names the fix and a non-zero exit.

Nothing here imports TensorFlow (its errors are recognised by class name), so flag errors stay instant.
"""
import json
import os
import sys

RUN_RECORD = "run.json"  # written beside saved_model.pb by train.py

EXIT_UNEXPECTED = 1  # a bug or something unforeseen: --debug shows where
EXIT_ERROR = 2  # a problem the user can fix as the message says
EXIT_INTERRUPTED = 130

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "BERT_SUITE_DEBUG"
# What train.py can lower when memory runs out; evaluate.py and predict.py name their own MEMORY_FLAGS.
TRAINING_MEMORY_FLAGS = "--batch-size (training and validation), --eval-batch-size (test scoring) or --seq-length"


_in_cluster = False  # set once the process joined a multi-worker cluster (runtime.make_strategy)


def joined_cluster():
    """Mark this process as a cluster's worker: an error then ends it at once, since TensorFlow's teardown
    can wait on threads still blocked on a lost peer."""
    global _in_cluster
    _in_cluster = True


def exit_with(main):
    """A script's end: run(main) on the command line's arguments, then exit with its code (at once, skipping
    the interpreter's teardown, after an error in a cluster's worker)."""
    code = run(main)
    if code and _in_cluster:
        end_process_now(code)
    sys.exit(code)


def run(main, argv=None):
    """Call main(argv); end every error in one line on stderr and return the exit code.

    0: done. 2 (EXIT_ERROR): a bad value, a file problem or out of memory, with the fix named.
    130: interrupted. 1 (EXIT_UNEXPECTED): anything else, as `error: <Type>: <first line>`; with
    --debug in argv (None = sys.argv[1:]) or BERT_SUITE_DEBUG=1 it is re-raised to show the traceback.
    """
    stdout = sys.stdout
    output = LineEnds(stdout)
    if stdout is not None:  # None when Python started without it
        sys.stdout = output
    try:
        main(argv)
        return 0
    except ValueError as error:  # bad values: the message says what to do
        line, code = f"error: {error}", EXIT_ERROR
    except OSError as error:  # disk full, read-only folder, missing file
        line, code = (f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": ")
                      + " (check the path, its permissions and free space)"), EXIT_ERROR
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM/SIGINT that training checkpointed for
        what = f"stopped by {interrupt}" if str(interrupt) else "interrupted: nothing was overwritten"
        line, code = f"{what}; run the same command again to resume", EXIT_INTERRUPTED
    except Exception as error:
        if is_out_of_memory(error):
            line, code = out_of_memory_line(error, memory_flags(main)), EXIT_ERROR
        elif debug_requested(argv):
            output.end_line()
            raise
        else:
            line, code = unexpected_error_line(error), EXIT_UNEXPECTED
    finally:
        sys.stdout = stdout
    output.end_line()
    print(line, file=sys.stderr)
    return code


class LineEnds:
    """stdout, noting whether its last write left a line open (Keras' progress bar does, mid-epoch), so an
    error line can start on a line of its own and after everything printed before it."""

    def __init__(self, stream):
        self.stream = stream
        self.line_open = False

    def write(self, text):
        if text:
            self.line_open = not text.endswith("\n")
        return self.stream.write(text)

    def end_line(self):
        """Close an open line and flush, so what follows on stderr is not glued to it or printed before it."""
        if self.stream is None:  # Python started without stdout
            return
        try:
            if self.line_open:
                self.stream.write("\n")
                self.line_open = False
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def end_process_now(code):
    """Flush what was printed and end the process with code, skipping the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None when Python started without it
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


def is_out_of_memory(error):
    """True for TensorFlow's ResourceExhaustedError (found by name so TensorFlow need not be imported)
    and for Python's MemoryError (NumPy's arrays of token ids and logits)."""
    return isinstance(error, MemoryError) or any(cls.__name__ == "ResourceExhaustedError"
                                                  for cls in type(error).__mro__)


def out_of_memory_line(error, flags):
    # TensorFlow's message can start with "Graph execution error:"; the OOM line names shape and device.
    detail = next((line.strip() for line in str(error).splitlines() if "OOM" in line), "")
    return f"error: out of memory{f' ({detail})' if detail else ''}; lower {flags} and run again"


def error_summary(error):
    """The error's type and the first line of its message: "ValueError: ..."."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def unexpected_error_line(error):
    return f"error: {error_summary(error)} (run again with {DEBUG_FLAG}, or {DEBUG_VARIABLE}=1, to see the traceback)"


def memory_flags(main):
    """The flags that lower memory use, as main's script names them in MEMORY_FLAGS."""
    script = sys.modules.get(getattr(main, "__module__", None) or "")
    return getattr(script, "MEMORY_FLAGS", TRAINING_MEMORY_FLAGS)


def debug_requested(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def previous_model_dir(model_dir):
    """Where a save parks the old model between its two renames."""
    return model_dir.rstrip("/") + ".previous"


def read_run_record(model_dir):
    """The run record beside a saved model, or None if it can't be read (saving.load says why)."""
    try:
        with open(os.path.join(model_dir, RUN_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def require_model_dir(model_dir):
    """ValueError unless model_dir holds a classifier saved by train.py (checked before
    TensorFlow loads, so the error comes at once)."""
    if not os.path.isdir(model_dir) and not os.path.isdir(previous_model_dir(model_dir)):
        raise ValueError(f"no model at --model-dir {model_dir}; train one with `python train.py "
                         f"--model-dir {model_dir}` or point at an existing one")
    if os.path.isdir(model_dir) and not all(
            os.path.isfile(os.path.join(model_dir, name)) for name in ("saved_model.pb", RUN_RECORD)):
        raise ValueError(f"{model_dir} is not a classifier saved by train.py (no saved_model.pb and "
                         f"{RUN_RECORD}); point --model-dir at one")
    return model_dir
