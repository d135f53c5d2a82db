"""A saved classifier behind TensorFlow Serving's REST API, with concurrent requests batched.

    POST /v1/models/NAME[/versions/1]:predict   {"instances": [...]} -> {"predictions": [...]}
                                                {"inputs": [...]}    -> {"outputs": {...}}
    POST /v1/models/NAME[/versions/1]:explain   not TensorFlow Serving's: :predict's answers, each with the
                                                words of its text weighted toward its label (occlusion)
    GET  /                                      not TensorFlow Serving's: a page to try the model, with
                                                /page.js and /page.css (tfhub_classifier/templates)
    GET  /v1/models/NAME[/versions/1]           TensorFlow Serving's model_version_status, exactly
    GET  /v1/models/NAME[/versions/1]/metadata  TensorFlow Serving's: every signature of the SavedModel
    GET  /v1/models/NAME[/versions/1]/record    not TensorFlow Serving's, only with --expose-record: the
                                                task, --threshold, --top-k and the run record the model
                                                was saved with (no local paths, no URL credentials)
    GET  /healthz                               200 once the model is loaded and warmed up, with the
                                                precision in force and the model calls made and texts
                                                scored, queued and dropped; 503 if the Batcher has died

A text is a JSON string or TensorFlow Serving's {"b64": "..."} (its decoded bytes are the text),
given as itself or as {"text": ...} in the row format. Each prediction holds the saved model's
serving_default outputs, `probabilities` (binary: the positive label's, a number; otherwise one
per label) and `label_names`, plus the label fields predict.py's --format jsonl writes (binary:
score and label; multi-class: label and probability, and top_k with --top-k over 1; multi-label:
labels); the columnar format answers each of them as a list, one value per text.

The status and metadata answers have TensorFlow Serving's exact shapes: strict clients parse them.
Metadata copies every SignatureDef in saved_model.pb, as TensorFlow Serving does, without its
"@type" (its REST handler unpacks the Any holding the SignatureDefMap, so its answer has none
either); the prediction fields beyond serving_default's two are the suite's additions, described
here and in docs/serving.md, not invented outputs. The run record, which TensorFlow Serving has no
place for, is under /record.

Scores are float32 by default, exactly serving_default's; --precision bfloat16 trades up to
about 0.02 of a probability for speed on CPUs with AVX512-BF16/AMX; /healthz says which is in force.

Only requests whose Host header is an IP address or names localhost, --host or one of
--allowed-hosts are answered (400 otherwise: DNS rebinding); :predict takes only Content-Type:
application/json (415 otherwise: a browser posts other types cross-site without a CORS preflight);
CORS headers only for --cors-origin.

Errors are TensorFlow Serving's `{"error": "..."}`: 4xx for the request's fault, 503 when the
queue is full (--max-queued-texts, as TensorFlow Serving's max_enqueued_batches) or the Batcher
has died, 500 when a model call fails. Texts from concurrent requests share model calls
(`Batcher`), scored one call at a time in a worker thread by the suite's fast path
(scoring.logits_of: each call padded to its longest text). TensorFlow loads only in
`Servable.load`, so flag and port errors come at once.
"""
import asyncio
import contextlib
import ipaddress
import os
import re

import fastapi
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import config
from tfhub_classifier.serving import batching, protocol
from tfhub_classifier.serving.protocol import RequestError

DRAIN_SECONDS = 5.0  # how long an over-size body is read and dropped, so its client sees the 413
EXPLAIN_QUEUE = 4  # :explain's texts that may wait, in requests of --max-explain-texts: past it, 503
CLIENT_GONE = 499  # nginx's status for a client that closed its connection before the answer


def model_name(cfg):
    """The NAME in /v1/models/NAME: --model-name, else the model dir's base name."""
    name = cfg.model_name or os.path.basename(os.path.abspath(cfg.model_dir))
    if not config.MODEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"the model dir's name {name!r} can't be part of a URL path; name the model with "
                         "--model-name (letters, digits, '.', '_' and '-')")
    return name


async def read_body(request, limit):
    """The request body, refused with 413 past limit bytes: by its Content-Length, or by counting
    what arrives (a chunked body declares none). The rest of an over-size body is read and dropped
    for up to DRAIN_SECONDS, as web servers do, so its client reads the 413 instead of a reset."""
    too_large = RequestError(413, f"the request body is over --max-request-bytes {limit:,}; send fewer or "
                                  "shorter texts per request")
    stream = request.stream()
    declared = request.headers.get("content-length")
    try:
        if declared is not None and int(declared) > limit:
            if request.headers.get("expect", "").lower() != "100-continue":  # else the client waits for a go
                await _drain(stream)
            raise too_large
        chunks, size = [], 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _drain(stream)
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(CLIENT_GONE, "the client disconnected before the end of the request body") from None
    return b"".join(chunks)


async def _drain(stream):
    async def read_to_the_end():
        async for _ in stream:
            pass
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
        await asyncio.wait_for(read_to_the_end(), DRAIN_SECONDS)


async def hung_up(request):
    """Returns once the client has closed its connection. The body is read by now, so the server
    (uvicorn) answers receive() only with http.disconnect, when the connection is lost."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(servable, name, cfg):
    """The FastAPI app serving servable as NAME; its lifespan runs the Batcher (app.state.batcher).
    app.state.cut_off counts the requests cancelled unanswered (a drain that timed out)."""
    batcher = batching.Batcher(servable.score, cfg.serve_batch_size, cfg.batch_timeout_ms / 1000, cfg.max_queued_texts)
    # :explain's texts, one a call, on a thread of their own: an explanation (occlusion, which leaves the
    # model as it is) takes a model call per word, and :predict goes on beside it, sharing the cores.
    explaining = batching.Batcher(servable.explain, 1, 0, EXPLAIN_QUEUE * cfg.max_explain_texts)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        explaining.start()
        yield
        await explaining.close()
        await batcher.close()

    app = fastapi.FastAPI(title=f"{name} (TensorFlow Serving REST API)", lifespan=lifespan,
                          docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.batcher, app.state.cut_off = batcher, 0
    page_html = page_template().render(name=name, kind=servable.task.kind, label_names=list(servable.task.label_names),
                                       max_text_chars=cfg.max_text_chars)

    def check_servable(requested, version, label):
        """404 or 400 as TensorFlow Serving answers for another model, version or version label."""
        if label is not None and label != cfg.version_label:
            raise RequestError(400, f"Unrecognized servable version label: {label}")
        if requested != name or (version is not None and int(version) != int(protocol.MODEL_VERSION)):
            which = f"Latest({requested})" if version is None else f"Specific({requested}, {int(version)})"
            raise RequestError(404, f"Servable not found for request: {which}")

    async def predict(request, requested, version, label, method):
        check_servable(requested, version, label)
        if method not in ("predict", "explain"):  # TensorFlow Serving's answer for a predict-only signature
            kind = "classification" if method == "classify" else "regression"
            raise RequestError(400, f"Expected {kind} signature method_name to be tensorflow/serving/{method}. "
                                    "Was: tensorflow/serving/predict")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":  # a browser sends other types cross-site with no CORS preflight
            raise RequestError(415, f"the request's Content-Type is {media_type or 'missing'}; send JSON as "
                                    "Content-Type: application/json (curl: -H 'Content-Type: application/json')")
        try:
            payload = protocol.parse_json(await read_body(request, cfg.max_request_bytes))
            texts, columnar = protocol.texts_of_request(payload, cfg.max_text_chars, cfg.max_texts_per_request)
            if method == "explain" and len(texts) > cfg.max_explain_texts:
                raise RequestError(400, f"{len(texts)} texts to explain, over --max-explain-texts "
                                        f"{cfg.max_explain_texts}; each takes a model call per word: send fewer")
            results = await (explaining if method == "explain" else batcher).score(texts, lambda: hung_up(request))
        except batching.ClientGone:
            raise RequestError(CLIENT_GONE, "the client disconnected; its texts were not scored") from None
        except asyncio.CancelledError:  # uvicorn cut the request off: the drain timed out
            app.state.cut_off += 1  # answered, if the connection still takes it, without a traceback in the log
            return JSONResponse({"error": f"the server is stopping: --drain-timeout-s {cfg.drain_timeout_s:g} ran "
                                          "out before this request was answered; retry"}, status_code=503)
        # TensorFlow Serving answers row requests with "predictions" (an object per text, as the model
        # has several named outputs) and columnar ones with "outputs" (a list per output); so do we.
        return JSONResponse({"outputs": protocol.as_columns(results)} if columnar else {"predictions": results})

    async def model_info(requested, version, label, part):
        if not requested:
            raise RequestError(400, "Missing model name in request.")
        check_servable(requested, version, label)
        if part not in ("metadata", "record"):  # TF Serving: any other case of "metadata" asks for the status
            return JSONResponse(protocol.model_status())
        if part == "metadata":
            return JSONResponse(protocol.model_metadata(name, servable))
        if not cfg.expose_record:
            raise RequestError(404, "the run record is not served; start serve.py with --expose-record to serve it "
                                    "(local paths and URL credentials removed)")
        return JSONResponse(protocol.model_record(name, servable))

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def health():
        failure = batcher.failure() or explaining.failure()
        body = {"status": "unavailable" if failure else "ok", "model": name, "precision": servable.precision,
                "engine": servable.engine, "attention": servable.attention, "model_calls": batcher.calls,
                "texts_scored": batcher.texts, "texts_queued": batcher.queued, "texts_dropped": batcher.dropped,
                "texts_explained": explaining.texts}
        return JSONResponse({**body, "error": failure} if failure else body, status_code=503 if failure else 200)

    @app.api_route("/", methods=["GET", "HEAD"])
    async def page():  # the suite's: a page to try the model, its script and styles served from here too
        return HTMLResponse(page_html, headers=PAGE_HEADERS)

    @app.api_route("/page.{kind}", methods=["GET", "HEAD"])
    async def page_asset(kind: str):
        if kind not in PAGE_ASSETS:
            raise RequestError(404, f"Not Found: /page.{kind}")
        return Response(PAGE_ASSETS[kind][1], media_type=PAGE_ASSETS[kind][0], headers=PAGE_HEADERS)

    # TensorFlow Serving's routes, matched as its handler matches them (case-insensitive, versions as
    # integers, version labels, then the method and "metadata" compared as written); a path under /v1/
    # that matches none is its 400 "Malformed request".
    @app.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    async def tf_serving(request: fastapi.Request, rest: str):  # after /healthz: it takes every other path
        path, method = request.url.path, request.method
        if not (path.lower() + "/").startswith("/v1/"):
            raise RequestError(404, f"Not Found: {method} {path}")
        found = PREDICT_ROUTE.fullmatch(path) if method == "POST" else None
        if found and found.group(4) in ("classify", "regress", "predict", "explain"):  # as written, as TF Serving
            return await predict(request, *found.groups())
        found = MODEL_ROUTE.fullmatch(path) if method in ("GET", "HEAD") else None
        if found:
            return await model_info(*found.groups())
        raise RequestError(400, f"Malformed request: {method} {path}")

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(batching.Unavailable)
    async def unavailable(request, error):  # a full queue or a dead Batcher: the client may retry
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):  # unknown routes and methods, in TensorFlow Serving's shape
        return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(request, error):  # e.g. out of memory in a model call; uvicorn logs the traceback
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {batching.first_line(error)}"},
                            status_code=500)

    if cfg.cors_origin:
        app.add_middleware(JSONErrorCORS, allow_origins=[cfg.cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    app.add_middleware(HostCheck, allowed=allowed_hosts(cfg))  # added last: it runs first
    return app


class JSONErrorCORS(CORSMiddleware):
    """Starlette's CORS, its refused preflights answered with a JSON error body like every other error."""

    def preflight_response(self, request_headers):
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        return JSONResponse({"error": f"CORS preflight refused: {response.body.decode()}; the allowed origin is "
                                      "--cors-origin's"}, status_code=response.status_code)


TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")
# The page runs only its own script and styles, and talks only to this server: injected markup could run nothing.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                           "connect-src 'self'; img-src 'self' data:; form-action 'none'; "
                                           "frame-ancestors 'none'; base-uri 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _asset(name):
    with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
        return f.read()


PAGE_ASSETS = {"js": ("text/javascript", _asset("page.js")), "css": ("text/css", _asset("page.css"))}


def page_template():
    import jinja2
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    return environment.get_template("page.html")


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_VERSION = r"(?:(?:/versions/([0-9]{1,18}))|(?:/labels/([^/:]+)))?"  # TensorFlow Serving's: a number, or a label
PREDICT_ROUTE = re.compile(rf"/v1/models/([^/:]+){_VERSION}:(classify|regress|predict|explain)", re.IGNORECASE)
MODEL_ROUTE = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION}(?:/(metadata|record))?", re.IGNORECASE)


def allowed_hosts(cfg):
    """The Host header names served: this machine's, --host's (unless every interface), --allowed-hosts;
    None when --allowed-hosts is * (any)."""
    extra = [name.strip().lower() for name in cfg.allowed_hosts.split(",") if name.strip()]
    if "*" in extra:
        return None
    return {*LOCAL_HOSTS, *extra} | ({cfg.host.lower()} if cfg.host not in ("0.0.0.0", "::") else set())


def host_served(host, allowed):
    """Whether a Host header is answered: a name in allowed, or an IP address (no DNS name to rebind:
    load balancers' and Kubernetes' health checks send one), or none at all (HTTP/1.0 health checks;
    browsers always send one)."""
    if not host:
        return True
    found = re.fullmatch(r"\[([0-9a-f:.]+)\](?::[0-9]+)?|([^:\[\]]*)(?::[0-9]+)?", host)
    if not found:
        return False
    name = (found.group(1) or found.group(2)).rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in allowed


class HostCheck:
    """400 with a JSON error for a Host header not in allowed (what stops DNS rebinding). By hand, as
    Starlette's TrustedHostMiddleware answers in plain text and TF Serving's clients parse JSON errors."""

    def __init__(self, app, allowed):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            if not host_served(host, self.allowed):
                answer = JSONResponse({"error": f"the Host header {host or '(none)'!r} is not one this server "
                                                "answers to; start serve.py with --allowed-hosts naming it"},
                                      status_code=400)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


EXPLAIN_QUEUE = 4  # :explain's texts that may wait, in requests of --max-explain-texts: past it, 503
