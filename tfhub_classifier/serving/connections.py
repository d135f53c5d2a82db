"""The connections under serve.py's REST API: the listening socket, uvicorn, and what uvicorn lacks
before it faces a network (GuardedHTTP: read and write deadlines and a connection cap sized to the
open-file limit)."""
import json
import signal
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

ACCEPT_BURST = 128  # the listen backlog, which is also how many connections asyncio accepts in one go
ACCEPT_BURSTS_AHEAD = 2  # bursts accepted before their connections are counted (and the idle closed)
RESERVED_DESCRIPTORS = 32  # the process's own files, sockets and pipes besides its connections


def check_descriptor_limit(max_connections):
    """ValueError unless --max-connections fits the open-file limit, with room for a burst of accepts
    and for connections being closed: else accept() fails with 'Too many open files' under a flood."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - ACCEPT_BURSTS_AHEAD * ACCEPT_BURST - RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and max_connections > room:
        kept = soft - room
        if room < 1:
            raise ValueError(f"this process's open-file limit ({soft}) leaves no room for connections beside the "
                             f"{kept} kept for accepting and its own files; raise it "
                             f"(ulimit -n {kept + max_connections})")
        raise ValueError(f"--max-connections {max_connections} does not fit this process's open-file limit "
                         f"({soft}, with {kept} kept for accepting and its own files); use --max-connections "
                         f"{room} or less, or raise the limit (ulimit -n {kept + max_connections})")
    return max_connections


def bind(host, port):
    """A socket bound to host:port, not yet listening: a port in use fails now, before TensorFlow
    loads, and clients are refused (not kept waiting) until the model is ready."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ValueError(f"can't listen on --host {host} ({error.strerror or error}); use an address of "
                         "this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart needn't wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ValueError(f"can't listen on {host}:{port} ({error.strerror or error}); stop what uses the "
                         "port or pass another --port") from None
    return sock


def uvicorn_server(app, cfg):
    """The uvicorn server that runs app: quiet but for warnings, draining for cfg.drain_timeout_s, its
    connections guarded (GuardedHTTP) with cfg's read timeout and connection cap."""
    protocol_class = type("GuardedHTTP", (GuardedHTTP,), {"read_timeout": cfg.read_timeout_s,
                                                          "max_connections": cfg.max_connections})
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=cfg.drain_timeout_s, http=protocol_class,
                                         timeout_keep_alive=cfg.keep_alive_timeout_s, backlog=ACCEPT_BURST))


LINGER_SECONDS = 2.0  # how long a refused connection's leftover request is read before the close
MAX_LINGERING = ACCEPT_BURST // 2  # refused connections lingering at once: half the descriptors kept spare


def _raw_answer(status, reason, message):
    """A whole HTTP/1.1 answer with TF Serving's JSON error body, for what is refused before any request."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedHTTP(H11Protocol):
    """uvicorn's HTTP/1.1 connection with what it lacks before it faces a network. By hand, as uvicorn
    has a keep-alive timeout but none for reading a request or writing an answer and no connection
    cap, and no other maintained ASGI server here offers all three.

    A read deadline: a request must arrive whole within read_timeout seconds of its first byte (or of
    the connection opening), else the connection is cut (with a 408 if its headers were still coming;
    silently if it never sent a byte): trickling headers or a stalled body hold nothing for long,
    SIGTERM's drain included. Between requests only the keep-alive timeout applies. A write deadline:
    an answer the client does not read for read_timeout seconds cuts the connection. A cap: past
    max_connections open connections, the longest-idle one (no request running) is closed to make
    room, or, with none idle, the new one gets 503."""

    read_timeout = 10.0
    max_connections = 512

    def connection_made(self, transport):
        super().connection_made(transport)
        self.read_deadline = self.write_deadline = None
        self.request_begun, self.half_closed, self.refusing, self.last_active = False, False, False, self.loop.time()
        self._arm_read_deadline()
        open_connections = [c for c in self.connections
                            if not (c.transport.is_closing() or getattr(c, "refusing", False))]
        if len(open_connections) > self.max_connections:
            idle = [c for c in open_connections if c is not self and isinstance(c, GuardedHTTP) and c.evictable()]
            if idle:
                min(idle, key=lambda connection: connection.last_active).cut()
            else:
                self.refuse(503, "Service Unavailable", f"over --max-connections {self.max_connections} "
                                                        "connections, each with a request running; retry")

    def send_400_response(self, msg):
        """Malformed HTTP: TF Serving's JSON error body, not uvicorn's plain text."""
        self.refuse(400, "Bad Request", msg)

    def refuse(self, status, reason, message):
        """Answer and close so that the answer arrives: closing with the client's request unread would
        send a reset, which can destroy the answer before the client reads it. So: the answer, then our
        FIN, then what the client still sends is read and dropped until its own FIN or LINGER_SECONDS."""
        self._cancel(("read_deadline", "write_deadline"))
        lingering = sum(1 for connection in self.connections if getattr(connection, "refusing", False))
        self.refusing = True
        self.transport.write(_raw_answer(status, reason, message))
        if lingering >= MAX_LINGERING or not self.transport.can_write_eof():  # a flood: descriptors first
            self.transport.close()
            return
        self.transport.write_eof()
        self.read_deadline = self.loop.call_later(LINGER_SECONDS, self.cut)

    def idle(self):
        """No request running on it."""
        return self.cycle is None or self.cycle.response_complete

    def evictable(self):
        """Idle with no answer still being sent: cutting it loses no answer (only a request still coming in)."""
        return self.idle() and not self.transport.get_write_buffer_size()

    def request_in(self):
        """The request being read has all come: h11 has its end (DONE; MUST_CLOSE for HTTP/1.0 and
        `Connection: close`), or, answered before its body ended, the connection is between requests."""
        state = self.conn.their_state
        if state in (h11.DONE, h11.MUST_CLOSE):
            return True
        return state is h11.IDLE and self.idle() and not self.conn.trailing_data[0]

    def cut(self):
        """Close at once, discarding what is unsent: its descriptor is free now, not once a client reads."""
        self._cancel(("read_deadline", "write_deadline"))
        self.transport.abort()

    def data_received(self, data):
        if self.refusing:
            return  # answered already; read only so that closing sends no reset
        if not self.request_begun:  # the first byte of a request: its whole must follow in time
            self.request_begun = True
            self._arm_read_deadline()
        super().data_received(data)
        self.last_active = self.loop.time()
        if self.request_in():
            self.request_begun = False
            self._cancel(("read_deadline",))
            if self.idle() and self.timeout_keep_alive_task is None and not self.transport.is_closing():
                # The rest of a body answered early came: between requests again, and uvicorn's
                # data_received stopped its keep-alive timer.
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)

    def eof_received(self):
        """The client has closed its sending side. After a whole request, that may be all it does (HTTP
        allows it: `shutdown(SHUT_WR)`), so it still gets its answer, and the connection closes after;
        TCP can't tell this from a full close until the answer is written, so only a reset
        (connection_lost) drops waiting texts. Mid-request or between requests, nothing more can come."""
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE) and not self.idle() and not self.refusing:
            self.half_closed = True
            return True  # asyncio keeps the transport open for writing
        return None  # asyncio closes the transport

    def on_response_complete(self):
        super().on_response_complete()
        self.last_active = self.loop.time()
        pending, _ = self.conn.trailing_data
        if self.half_closed and not pending:
            self.transport.close()
            return
        if not self.transport.is_closing() and not self.request_in() and (
                pending or self.conn.their_state is h11.SEND_BODY):  # a pipelined request, part come
            self.request_begun = True
            self._arm_read_deadline()

    def pause_writing(self):
        super().pause_writing()
        self._cancel(("write_deadline",))
        self.write_deadline = self.loop.call_later(self.read_timeout, self._write_timed_out)

    def resume_writing(self):
        self._cancel(("write_deadline",))
        super().resume_writing()

    def connection_lost(self, exc):
        self._cancel(("read_deadline", "write_deadline"))
        super().connection_lost(exc)

    def _arm_read_deadline(self):
        self._cancel(("read_deadline",))
        self.read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _cancel(self, names):
        for name in names:
            handle = getattr(self, name, None)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _read_timed_out(self):
        self.read_deadline = None
        if self.transport.is_closing():
            return
        if self.request_begun and self.idle():  # headers still coming: say why
            self.refuse(408, "Request Timeout", f"no whole request within --read-timeout-s {self.read_timeout:g}")
        else:  # silent since it opened, or a body stalled (its request sees the hang-up: 499)
            self.cut()

    def _write_timed_out(self):
        self.write_deadline = None
        self.cut()


def serve(app, sock, cfg):
    """Serve app on the bound socket until SIGTERM or SIGINT; then stop taking connections, answer
    the requests in flight and queued (for up to cfg.drain_timeout_s) and return. ValueError if
    the drain timed out and requests were cut off unanswered."""
    server = uvicorn_server(app, cfg)
    # uvicorn re-raises the signal it drained for once it is done; here that means a normal exit.
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if app.state.cut_off:
        raise ValueError(f"{app.state.cut_off} request(s) were still running after --drain-timeout-s "
                         f"{cfg.drain_timeout_s:g} and were cut off unanswered; allow a longer drain "
                         "(and as long a grace period in the service manager)")
    return server
