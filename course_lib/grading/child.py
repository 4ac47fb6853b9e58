"""The learner's side of grading: a small supervisor and the process that runs the learner's code.

Started by :mod:`course_lib.grading.learner_process` as ``python -I child.py REQ_FD REP_FD``
in a new session (its own process group). It imports nothing from ``course_lib`` and holds no
checks, no expected answers and no results: it imports the learner's file, calls the
functions the grader names with the arguments the grader sends, and sends back what they
return (in the format of :mod:`wire`, loaded by path). The grader decides every verdict.

On POSIX the process splits in two before anything else:

* the **supervisor** (the process the grader started) only waits. It is the parent the
  learner's code sees, so ``os.kill(os.getppid(), ...)`` hits it, not the grader or a
  notebook kernel. On Linux it is a "child subreaper": processes the learner's code forks
  are re-parented to it when their parent dies, and it kills them all when the worker ends.
  Its exit status reports the worker's (the exit code, or 128 + the signal).
* the **worker** runs the learner's code, under a memory limit (``RLIMIT_AS``), and dies
  with the supervisor (``PR_SET_PDEATHSIG``).

Messages (one wire frame each; grader -> worker on REQ_FD, worker -> grader on REP_FD):
``init`` -> ``ready``; ``call`` -> ``return`` | ``raise`` | ``exit_called`` | ``unreadable``,
with ``callback`` / ``callback_result`` pairs in between; ``sync`` -> ``synced`` (after
writing a marker to stdout, so the grader can tell which output belongs to which exercise);
``exit``.
"""

import os
import sys

WIRE = None  # the wire module, loaded by path in main()


class State:
    in_call = False
    violations: list = []
    rules: dict = {}
    callbacks_valid = False


# ----------------------------------------------------------------------------- process setup


def _prctl(option: int, arg: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except Exception:  # not Linux, or no libc to call: the process group still covers us
        pass


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _descendants_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def supervise(worker: int) -> None:
    """Wait for the worker; then kill and reap whatever it left behind; exit with its status."""
    import signal
    import time

    status_code = 1
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == worker:
            if os.WIFSIGNALED(status):
                status_code = 128 + os.WTERMSIG(status)
            else:
                status_code = os.WEXITSTATUS(status)
            break
    # The worker is gone: kill every process re-parented to us (a fork the learner left running).
    for _ in range(50):
        orphans = _descendants_of(os.getpid())
        if not orphans:
            break
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
    os._exit(status_code)


# ----------------------------------------------------------------------------- answer key and shortcuts


class RefusedShortcut(RuntimeError):
    pass


class AnswerKeyImport(ImportError):
    pass


class Refuser:
    """Stands in for a ready-made function while the learner's code runs."""

    def __init__(self, name: str, original, message: str):
        self._name, self._original, self._message = name, original, message
        self.__name__ = name.rsplit(".", 1)[-1]
        self.__doc__ = getattr(original, "__doc__", None)

    def __call__(self, *args, **kwargs):
        if State.in_call:
            State.violations.append({"kind": "shortcut", "name": self._name})
            raise RefusedShortcut(self._message)
        return self._original(*args, **kwargs)

    def __get__(self, obj, owner=None):  # behave like a function when set on a class (torch.Tensor.softmax)
        if obj is None:
            return self
        import functools

        return functools.partial(self, obj)

    def __getattr__(self, attr):  # torch.ops.aten.layer_norm.default and friends
        if attr.startswith("__"):
            raise AttributeError(attr)
        inner = getattr(self._original, attr)
        if callable(inner):
            return Refuser(f"{self._name}.{attr}", inner, self._message)
        return inner


def resolve_owner(dotted: str):
    """(owner object, attribute name) for 'torch.nn.functional.gelu', 'torch.Tensor.softmax',
    'torch.ops.aten.gelu'; None if it does not exist in this torch."""
    import importlib

    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for part in parts[split:-1]:
                obj = getattr(obj, part)
            getattr(obj, parts[-1])
        except (AttributeError, RuntimeError):
            return None
        return obj, parts[-1]
    return None


def install_refusers(names: list, message_for) -> None:
    for name in names:
        found = resolve_owner(name)
        if found is None:
            continue
        owner, attr = found
        original = getattr(owner, attr)
        if isinstance(original, Refuser):
            continue
        try:
            setattr(owner, attr, Refuser(name, original, message_for(name)))
        except (AttributeError, TypeError):
            pass


class AnswerKeyFinder:
    """First on ``sys.meta_path``: refuses ``course_lib`` modules that are not allow-listed (and
    the course's ``solutions``), records the attempt, and patches allow-listed modules'
    refused names as they load."""

    def __init__(self, allow, refuse, package_dir):
        self.allow, self.refuse, self.package_dir = set(allow), list(refuse), package_dir

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top == "solutions":
            self._refused(name)
        if top != "course_lib":
            return None
        if name == "course_lib":  # the package itself is harmless (its names load lazily, through us)
            import importlib.util

            init = os.path.join(self.package_dir, "__init__.py")
            if os.path.exists(init):
                return importlib.util.spec_from_file_location(
                    "course_lib", init, submodule_search_locations=[self.package_dir])
            return None
        if name not in self.allow:
            self._refused(name)
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            refused = [r for r in self.refuse if r.rpartition(".")[0] == name]
            if refused:
                spec.loader = _PatchingLoader(spec.loader, refused)
        return spec

    def _refused(self, name):
        State.violations.append({"kind": "answer_key", "name": name})
        raise AnswerKeyImport(
            f"importing {name} is switched off while grading: it is the course's own implementation "
            f"(the answer key). Write the code yourself with torch/numpy/math.")


class _PatchingLoader:
    def __init__(self, loader, refused):
        self.loader, self.refused = loader, refused

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        for dotted in self.refused:
            attr = dotted.rpartition(".")[2]
            if hasattr(module, attr):
                setattr(module, attr, AnswerKeyRefuser(dotted))

    def __getattr__(self, attr):
        return getattr(self.loader, attr)


class AnswerKeyRefuser:
    def __init__(self, name):
        self._name = name
        self.__name__ = name.rsplit(".", 1)[-1]

    def __call__(self, *args, **kwargs):
        State.violations.append({"kind": "answer_key", "name": self._name})
        raise AnswerKeyImport(f"{self._name} is switched off while grading: it is the course's own answer to an "
                              f"exercise. Write it yourself (or call your own function from this file).")


# ----------------------------------------------------------------------------- calling the learner


def _learner_traceback(err: BaseException, source: str, display: str) -> str:
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) == source]
    shown = mine[-1:] or frames[-1:]
    where = "".join(f"  {display if os.path.abspath(f.filename) == source else os.path.basename(f.filename)}, "
                    f"line {f.lineno}, in {f.name}: {f.line}\n" for f in shown)
    try:
        text = str(err)
    except Exception:
        text = "<the exception's message could not be read>"
    return f"{type(err).__name__}: {text}\n{where}".rstrip()


class Channel:
    def __init__(self, req_fd: int, rep_fd: int):
        self.reader = WIRE.FrameReader(req_fd)
        self.rep_fd = rep_fd

    def send(self, **message) -> None:
        WIRE.write_frame(self.rep_fd, WIRE.encode(message))

    def receive(self) -> dict:
        while True:
            frame = self.reader.frame()
            if frame is not None:
                return WIRE.decode(frame)
            self.reader.feed()
            if self.reader.closed and self.reader.frame() is None:
                os._exit(0)  # the grader is gone


class CallbackStub:
    """A callable the grader passed: calling it asks the grader to run it."""

    def __init__(self, channel: Channel, ident: int):
        self._channel, self._ident = channel, ident
        self.__name__ = "callback"

    def __call__(self, *args, **kwargs):
        if not State.callbacks_valid:
            raise RuntimeError("this function was passed to an earlier call; it cannot be called any more")
        self._channel.send(op="callback", id=self._ident, args=WIRE.encode(list(args)),
                           kwargs=WIRE.encode(dict(kwargs)))
        reply = self._channel.receive()
        if reply.get("ok"):
            return WIRE.decode(reply["value"])
        raise _rebuilt_error(reply.get("type", "RuntimeError"), reply.get("message", ""))


def _rebuilt_error(type_name: str, message: str) -> BaseException:
    import builtins

    kind = getattr(builtins, type_name, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    return kind(message)


def _sync_output(marker: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    data = ("\n" + marker + "\n").encode()
    while data:
        try:
            n = os.write(1, data)
        except InterruptedError:
            continue
        data = data[n:]


def serve(channel: Channel, module, source: str, display: str) -> None:
    while True:
        message = channel.receive()
        op = message.get("op")
        if op == "exit":
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(0)
        if op == "sync":
            _sync_output(message["marker"])
            channel.send(op="synced")
            continue
        if op != "call":
            channel.send(op="unreadable", message=f"unknown request {op!r}")
            continue
        callback_ids: dict = {}

        def make_callback(ident):
            stub = CallbackStub(channel, ident)
            callback_ids[id(stub)] = ident
            return stub

        args_blob, kwargs_blob = message["args"], message["kwargs"]
        args = WIRE.decode(args_blob, make_callback)
        kwargs = WIRE.decode(kwargs_blob, make_callback)
        fn = getattr(module, message["fn"], None)
        torch = sys.modules.get("torch")
        State.violations = []
        State.in_call, State.callbacks_valid = True, True
        grad_before = torch.is_grad_enabled() if torch is not None else None
        reply: dict
        try:
            if torch is not None:
                torch.set_grad_enabled(bool(message.get("grad", True)))
            result = fn(*args, **kwargs)
            reply = {"op": "return", "result": result}
        except SystemExit as err:
            reply = {"op": "exit_called", "code": repr(err.code)}
        except BaseException as err:  # noqa: BLE001 - every learner error is reported, not raised
            import builtins

            kind = type(err)
            reply = {"op": "raise", "type": kind.__name__,
                     "builtin": getattr(builtins, kind.__name__, None) is kind,
                     "message": _safe_str(err), "traceback": _learner_traceback(err, source, display)}
        finally:
            State.in_call, State.callbacks_valid = False, False
            if torch is not None and grad_before is not None:
                torch.set_grad_enabled(grad_before)
        violations = list(State.violations)
        mutated = None
        try:
            if not any(_may_change(a) for a in args) and not any(_may_change(v) for v in kwargs.values()):
                raise _Unchanged
            after_args = WIRE.encode(args, callback_ids=callback_ids)
            after_kwargs = WIRE.encode(kwargs, callback_ids=callback_ids)
            if after_args != args_blob or after_kwargs != kwargs_blob:
                mutated = {"args": after_args, "kwargs": after_kwargs}
        except _Unchanged:
            pass
        except Exception:  # an argument the learner turned into something unreadable
            mutated = {"unreadable": True}
        if reply["op"] == "return":
            try:
                encoded = WIRE.encode(reply.pop("result"))
            except Exception as err:  # too big, too deep
                reply = {"op": "unreadable", "message": f"{type(err).__name__}: {err}"}
            else:
                reply["value"] = encoded
        reply["violations"] = violations
        reply["mutated"] = mutated
        channel.send(**reply)


class _Unchanged(Exception):
    pass


_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), type(Ellipsis), range, slice, frozenset)


def _may_change(value, depth: int = 0) -> bool:
    """False when ``value`` holds only immutable things (str, bytes, numbers, tuples of those):
    then the learner's code cannot have changed it, and it need not be encoded again."""
    if isinstance(value, _IMMUTABLE) or depth > 50:
        return depth > 50
    if type(value) is tuple:
        return any(_may_change(v, depth + 1) for v in value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return False
    return True


def _safe_str(err: BaseException) -> str:
    try:
        return str(err)[:4000]
    except Exception:
        return "<the exception's message could not be read>"


def worker(req_fd: int, rep_fd: int) -> None:
    channel = Channel(req_fd, rep_fd)
    init = channel.receive()
    limit = int(init.get("memory_bytes") or 0)
    if limit > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass  # macOS and Windows do not enforce it
    sys.path.append(init["exercises_dir"])  # the learner's file may import its neighbours
    sys.meta_path.insert(0, AnswerKeyFinder(init.get("allow", []), init.get("refuse", []), init["package_dir"]))
    shortcuts = init.get("shortcuts", [])
    if shortcuts:
        import torch  # noqa: F401 - the shortcuts must be switched off before the learner's file can grab them

        install_refusers(shortcuts, lambda name: (
            f"{name}() is switched off while grading: it is a ready-made version of what this exercise asks "
            f"you to write from primitive operations"))
    source, display, module_name = init["source"], init["display"], init["module"]
    import importlib.util

    module, error = None, None
    try:
        spec = importlib.util.spec_from_file_location(module_name, source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except BaseException as err:  # noqa: BLE001 - SyntaxError, SystemExit, an import refused ...
        error = f"your file {display} failed to import:\n{_learner_traceback(err, source, display)}"
        module = None
    functions = sorted(name for name in dir(module) if callable(getattr(module, name, None))) if module else []
    channel.send(op="ready", error=error, functions=functions, violations=list(State.violations))
    State.violations = []
    serve(channel, module, source, display)


def main() -> None:
    global WIRE
    req_fd, rep_fd, wire_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_course_grader_wire", wire_path)
    WIRE = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(WIRE)
    if hasattr(os, "fork"):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        supervisor = os.getpid()
        pid = os.fork()
        if pid:
            os.close(req_fd)
            os.close(rep_fd)
            supervise(pid)
            return
        _prctl(PR_SET_PDEATHSIG, 9)
        if os.getppid() != supervisor:  # the supervisor died before the line above
            os._exit(1)
    worker(req_fd, rep_fd)
    os._exit(0)


if __name__ == "__main__":
    main()
