"""Server-side batching: texts from concurrent requests gathered into shared model calls."""
import asyncio
import collections
import concurrent.futures
import contextlib
import sys


class Unavailable(Exception):
    """The Batcher takes no texts now (its queue is full) or ever (it died): retry later or elsewhere."""


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


class Job:
    """One request's texts in the Batcher: taken into model calls a few at a time, its results
    collected in order; `future` gets them all, or the first failure."""

    def __init__(self, texts, future):
        self.texts, self.future = texts, future
        self.results = [None] * len(texts)
        self.next = 0  # the first text not yet taken into a model call
        self.unanswered = len(texts)

    @property
    def waiting(self):
        return len(self.texts) - self.next


class ClientGone(Exception):
    """The client hung up while its texts waited."""


class Batcher:
    """Gathers texts from concurrent requests into model calls of up to batch_size texts.

    A call starts when batch_size texts wait, or timeout_s after the worker found the first of
    them waiting; texts that arrive while the worker thread scores a batch wait for the next call,
    so under load batches fill without waiting. batch_size 1 = one text per call.

    Each request is queued as one Job, and calls take texts from the waiting jobs in turn (one text
    from each, round and round), so a large request shares every call with the small ones that
    come after it instead of holding them back until it is done. At most max_queued texts wait:
    past that, a request is refused (503) at once. A request that fails (its model call raised) or
    is abandoned (its client hung up, or its handler was cancelled) has its waiting texts taken out
    of the queue; a call already holding some of them scores them and drops their results.
    """

    def __init__(self, score, batch_size, timeout_s, max_queued=None):
        self.score_batch, self.batch_size, self.timeout_s = score, batch_size, timeout_s
        self.max_queued = max_queued
        self.jobs = collections.deque()  # jobs with texts not yet taken, in turn order
        self.queued = 0  # texts waiting in self.jobs
        self.arrived = asyncio.Event()
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")  # one call at a time
        self.task = None
        self.calls = self.texts = 0  # model calls made and texts scored, for /healthz
        self.dropped = 0  # texts taken out of the queue unscored: their request failed or was abandoned

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.task.add_done_callback(self._died)

    def failure(self):
        """Why the Batcher can score nothing more (a one-line reason), or None while it runs."""
        if self.task is None:
            return "the batcher has not started"
        if not self.task.done():
            return None
        if self.task.cancelled():
            return "the batcher has stopped"
        error = self.task.exception()
        return f"the batcher died: {type(error).__name__}: {first_line(error)}"

    def _died(self, task):
        """When the worker loop ends (a bug, or close()), the requests still waiting get a 503."""
        reason = self.failure()
        if not task.cancelled():
            print(f"error: {reason}; /healthz now answers 503, restart the server", file=sys.stderr, flush=True)
        for job in list(self.jobs):
            if not job.future.done():
                job.future.set_exception(Unavailable(f"{reason}; retry on another server"))
            self._drop(job)

    async def close(self):
        """Stop once every queued text is scored (uvicorn has drained the requests by now)."""
        while self.queued and not self.task.done():
            await asyncio.sleep(0.01)
        self.task.cancel()
        await asyncio.wait({self.task})  # raises nothing: a death was reported when it happened
        self.worker.shutdown(wait=True)

    async def score(self, texts, gone=None):
        """The results of texts, in order, scored among other requests' texts. gone: a function
        whose awaitable returns if the client hangs up, whereupon the texts still waiting are
        dropped and ClientGone is raised. Unavailable (which the server answers with 503) if the queue
        is full or the Batcher has died."""
        reason = self.failure()
        if reason:
            raise Unavailable(f"{reason}; retry on another server")
        if self.max_queued is not None and self.queued + len(texts) > self.max_queued:
            raise Unavailable(f"the server is busy: {self.queued:,} texts wait for the model and "
                              f"{len(texts):,} more would pass --max-queued-texts {self.max_queued:,}; "
                              "retry shortly")
        job = Job(texts, asyncio.get_running_loop().create_future())
        self.jobs.append(job)
        self.queued += len(texts)
        self.arrived.set()
        try:
            if gone is None:
                return await job.future
            watcher = asyncio.ensure_future(gone())
            try:
                await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if job.future.done():
                return job.future.result()
            raise ClientGone()
        finally:
            self._drop(job)  # on failure, hang-up or cancellation: its waiting texts go unscored

    def _drop(self, job):
        if not job.future.done():
            job.future.cancel()
        elif not job.future.cancelled():
            job.future.exception()  # retrieved: asyncio logs no "exception was never retrieved"
        if job.waiting:
            self.queued -= job.waiting
            self.dropped += job.waiting
            job.next = len(job.texts)
            self.jobs.remove(job)

    def _take(self):
        """Up to batch_size (job, index) pairs, a text from each waiting job in turn."""
        batch = []
        while self.jobs and len(batch) < self.batch_size:
            job = self.jobs.popleft()
            batch.append((job, job.next))
            job.next += 1
            self.queued -= 1
            if job.waiting:
                self.jobs.append(job)
        return batch

    async def _gather(self):
        """Wait for texts, then for batch_size of them or timeout_s, whichever comes first."""
        loop = asyncio.get_running_loop()
        while not self.queued:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = loop.time() + self.timeout_s
        while 0 < self.queued < self.batch_size and loop.time() < deadline:
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            await self._gather()
            batch = self._take()
            if not batch:
                continue  # the waiting texts' requests gave up
            self.calls, self.texts = self.calls + 1, self.texts + len(batch)
            try:
                results = await loop.run_in_executor(self.worker, self.score_batch,
                                                     [job.texts[i] for job, i in batch])
            except Exception as error:  # its requests get a 500 and drop their other texts; the server goes on
                for job in {job: None for job, _ in batch}:
                    if not job.future.done():
                        job.future.set_exception(error)
                    self._drop(job)
                continue
            for (job, i), result in zip(batch, results):
                if job.future.done():
                    continue  # failed or abandoned meanwhile
                job.results[i] = result
                job.unanswered -= 1
                if not job.unanswered:
                    job.future.set_result(job.results)
