"""The connections under serve.py's REST API: the listening socket, what accepts from it (Acceptor),
uvicorn, and what uvicorn lacks before it faces a network (GuardedHTTP: read and write deadlines and a
connection cap), all within the process's open-file limit."""
import array
import asyncio
import errno
import fcntl
import json
import logging
import signal
import socket
import termios

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

ACCEPT_BATCH = 64  # connections accepted per turn of the event loop: also the most held past --max-connections
RESERVED_DESCRIPTORS = 32  # the process's own files, sockets and pipes besides its connections
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RETRY_ACCEPT_SECONDS = 1.0  # when accept() is tried again after running out, if no connection closes sooner


def check_descriptor_limit(max_connections):
    """ValueError unless --max-connections fits the open-file limit, with room for a batch of accepts
    beyond it (connections about to displace the idle or be refused) and for the process's own files."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - ACCEPT_BATCH - RESERVED_DESCRIPTORS
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


class Acceptor:
    """Accepts connections from a listening socket only while their descriptors fit: at most `limit`
    held (open, or closing after being displaced or refused), up to ACCEPT_BATCH per turn of the event
    loop. A flood past that waits in the kernel's queue, which listen() makes as long as the system
    allows (net.core.somaxconn), so a client's connection completes at once instead of its SYN being
    dropped and retried a second later. By hand, as asyncio's own accept loop takes as many as
    listen()'s backlog in one go whatever descriptors are left, then logs 'Too many open files' and
    stops accepting for a second; uvicorn serves through it. Speaks asyncio.Server's close() and
    wait_closed(), which uvicorn's shutdown calls."""

    def __init__(self, sock, protocol_factory, limit, loop):
        self.sock, self.protocol_factory, self.limit, self.loop = sock, protocol_factory, limit, loop
        self.held, self.reading, self.closed, self.warned = set(), False, False, False
        sock.setblocking(False)
        sock.listen(socket.SOMAXCONN)
        self._resume()

    def close(self):
        """Stop accepting and close the listening socket (connections still queued get a reset)."""
        self.closed = True
        self._pause()
        self.sock.close()

    async def wait_closed(self):
        return None

    def _held(self):
        self.held = {conn for conn in self.held if conn.fileno() != -1}  # asyncio closes a transport's socket
        return len(self.held)

    def _accept(self):
        for _ in range(min(ACCEPT_BATCH, self.limit - self._held())):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # the queue is empty
            except OSError as error:
                if error.errno not in OUT_OF_DESCRIPTORS:
                    raise
                if not self.warned:  # the process's own files took more than RESERVED_DESCRIPTORS
                    logging.getLogger("uvicorn.error").warning(
                        "the open-file limit is reached (%s); new connections wait until one closes: raise "
                        "it (ulimit -n) or lower --max-connections", error.strerror)
                self.warned = True
                self._pause()
                self.loop.call_later(RETRY_ACCEPT_SECONDS, self._resume)  # if no connection closes sooner
                return
            conn.setblocking(False)
            self.held.add(conn)
            self.warned = False
            task = self.loop.create_task(self.loop.connect_accepted_socket(self._protocol, conn))
            task.add_done_callback(lambda made, conn=conn: self._made(made, conn))
        if self._held() >= self.limit:
            self._pause()

    def _protocol(self):
        protocol = self.protocol_factory()
        protocol.on_closed = self._closed
        return protocol

    def _made(self, task, conn):
        if task.cancelled() or task.exception() is not None:  # no transport to close it
            conn.close()
            self._closed()

    def _closed(self):
        """A connection is closing: once its descriptor is free (after this turn), accept again."""
        if not self.reading and not self.closed:
            self.loop.call_soon(self._resume)

    def _pause(self):
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _resume(self):
        if not self.reading and not self.closed and self._held() < self.limit:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self.reading = True


class GuardedServer(uvicorn.Server):
    """uvicorn's server, accepting through an Acceptor that holds at most --max-connections plus a
    batch of connections, so their descriptors fit the limit check_descriptor_limit checked."""

    async def startup(self, sockets=None):
        if not sockets:
            raise ValueError("GuardedServer serves bound sockets: run it with sockets=[connections.bind(...)]")
        await super().startup(sockets=[])  # the lifespan (the model's warm-up) first; listening after it
        loop = asyncio.get_running_loop()

        def create_protocol():
            return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                                   app_state=self.lifespan.state, _loop=loop)
        limit = self.config.http_protocol_class.max_connections + ACCEPT_BATCH
        self.servers.extend(Acceptor(sock, create_protocol, limit, loop) for sock in sockets)


def uvicorn_server(app, cfg):
    """The uvicorn server that runs app: quiet but for warnings, draining for cfg.drain_timeout_s, its
    connections accepted within the open-file limit (Acceptor) and guarded (GuardedHTTP) with cfg's
    read timeout and connection cap."""
    protocol_class = type("GuardedHTTP", (GuardedHTTP,), {"read_timeout": cfg.read_timeout_s,
                                                          "max_connections": cfg.max_connections})
    # ws="none": a WebSocket upgrade would swap in a protocol without the deadlines, the cap or on_closed.
    return GuardedServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="none",
                                        timeout_graceful_shutdown=cfg.drain_timeout_s, http=protocol_class,
                                        timeout_keep_alive=cfg.keep_alive_timeout_s))


UNREAD_PEEK = 16384  # bytes of a connection's unread input looked at for a whole request head
LINGER_SECONDS = 2.0  # how long a refused connection's leftover request is read before the close
MAX_LINGERING = ACCEPT_BATCH // 2  # refused connections lingering at once: half the batch held past the cap


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
    an answer whose unsent part does not shrink for read_timeout seconds cuts the connection. A cap: past
    max_connections open connections, an idle one (no request running) is closed to make room, the
    longest-silent first among those with nothing waiting to be read, then among those with no whole
    request head waiting: a client whose request has come but not been read yet (accepted in one
    batch with a flood) is about to be busy. With none idle, the new one gets 503."""

    read_timeout = 10.0
    max_connections = 512

    def on_closed(self):
        """Called as the connection closes (the Acceptor sets it, to accept again)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.queued, write = 0, transport.write

        def counted_write(data):  # what went out is what was queued less what is still unsent
            self.queued += len(data)
            write(data)
        transport.write = counted_write
        self.read_deadline = self.write_deadline = None
        self.request_begun, self.half_closed, self.refusing, self.last_active = False, False, False, self.loop.time()
        self._arm_read_deadline()
        open_connections = [c for c in self.connections
                            if not (c.transport.is_closing() or getattr(c, "refusing", False))]
        if len(open_connections) > self.max_connections:
            idle = sorted((c for c in open_connections if c is not self and isinstance(c, GuardedHTTP)
                           and c.evictable()), key=lambda connection: connection.last_active)
            victim = _victim(idle)
            if victim is not None:
                victim.cut()
            else:
                self.refuse(503, "Service Unavailable", f"over --max-connections {self.max_connections} "
                                                        "connections, each with a request running; retry")

    def unread(self):
        """What the client has sent that is not read yet (up to UNREAD_PEEK bytes of it), left in place."""
        descriptor = self.transport.get_extra_info("socket").fileno()
        waiting = array.array("i", [0])
        try:
            fcntl.ioctl(descriptor, termios.FIONREAD, waiting, True)
            if not waiting[0]:
                return b""
            peeking = socket.socket(fileno=descriptor)  # the connection's own socket object is asyncio's
            try:
                return peeking.recv(UNREAD_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            finally:
                peeking.detach()
        except OSError:
            return b""

    def send_400_response(self, msg):
        """Malformed HTTP: TF Serving's JSON error body, not uvicorn's plain text."""
        self.refuse(400, "Bad Request", msg)

    def refuse(self, status, reason, message):
        """Answer and close so that the answer arrives: closing with the client's request unread would
        send a reset, which can destroy the answer before the client reads it. So: the answer, then our
        FIN, then what the client still sends is read and dropped until its own FIN or LINGER_SECONDS."""
        self._cancel(("read_deadline",))
        lingering = sum(1 for connection in self.connections if getattr(connection, "refusing", False))
        self.refusing = True
        self.transport.write(_raw_answer(status, reason, message))
        if lingering >= MAX_LINGERING or not self.transport.can_write_eof():  # a flood: descriptors first
            self.transport.close()
            if self.write_deadline is None:
                self._watch_unsent()
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
        if self.write_deadline is None:
            self._watch_unsent()
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
        self._watch_unsent()

    def connection_lost(self, exc):
        self._cancel(("read_deadline", "write_deadline"))
        super().connection_lost(exc)
        self.on_closed()

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

    def _watch_unsent(self, sent_before=None):
        """Cut the connection if, with answer bytes waiting to be sent (the kernel's buffer full), none
        goes out for read_timeout seconds: a client that stopped reading. Watched while any is left,
        also under asyncio's 64 KiB high-water mark and after the close that waits for it to go out."""
        self._cancel(("write_deadline",))
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        sent = self.queued - unsent
        if sent_before is not None and sent <= sent_before:
            self.cut()
            return
        self.write_deadline = self.loop.call_later(self.read_timeout, self._watch_unsent, sent)


def _victim(idle):
    """Of idle connections, longest-silent first: the first with nothing unread, else the first whose
    request head (read in part, and unread) is not whole, else the first."""
    heads = []
    for connection in idle:
        waiting = connection.unread()
        if not waiting:
            return connection
        heads.append((connection, bytes(connection.conn.trailing_data[0]) + waiting))
    return next((connection for connection, head in heads if b"\r\n\r\n" not in head), idle[0] if idle else None)


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
