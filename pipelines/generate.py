"""The generating stage: shard ids in, one staging file per shard out, the device kept busy.

    shard ids -> Reshuffle -> GenerateShards (one DoFn; per worker process one `Worker`)

Per worker process (every thread of it shares one `Worker`, through Beam's `Shared`):

- **one device**: claimed for the process's life (`generators.devices.claim_device`); the
  generator and every scorer run on it.
- **one call at a time per model copy**: `model.copies` pipelines, each handed to one thread
  at a time through a queue. A diffusers pipeline and its scheduler keep per-call state
  (DPM-Solver's step index and history), so two threads stepping one copy corrupt both
  images; Beam runs bundles on several threads (Dataflow's harness, `multi_threading`, Dask).
- **a device loop that does nothing but model calls**: the thread that runs the model calls
  of a shard hands each call's images, still on the device, to the worker's feeder thread
  and starts the next call at once. The feeder quantises them (on the device), hands each
  image to a pool of host threads (as many as cores) and runs the device scorers (CLIP, the
  safety checker) on each chunk of a shard (its `batch_size` consecutive requests) whose
  images are all prepared: the number of scoring calls is fixed by the plan, never by
  timing. The host work is the image's whole post-generation path: watermark, encode, hash,
  perceptual hash, host-only scores, pixel checks and the device scorers' preprocessing, all
  from the pixels in memory (nothing is decoded again; a lossy format is decoded once). At
  most `FEED_DEPTH` calls wait for the feeder and `in_flight` images between the model and
  the scorers; when host work falls that far behind, the feeder scores what is ready and
  then waits, and the device loop waits for the feeder: memory stays bounded.
- **the shard is the unit of memory and loss**: a shard's samples are written to its staging
  file as soon as the last one is scored, while the device generates the next shard; a
  thread keeps at most one earlier shard in flight. A crash loses only shards in flight.
- **out of device memory stops the build** at the first such call, with advice; any other
  failing call is tried again in halves, each padded back to the fixed shape, until the
  failing sample is alone and becomes its `failed` row (a failing sample costs only itself).

Beam counters (`generate_calls`, `score_calls`, `staged`, ...) are counted in the DoFn's own
thread, from what each finished shard reports: Beam attributes a counter only there.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from synthgen.generators.devices import claim_device
from synthgen.generators.handler import (
    DeviceOutOfMemory,
    DiffusersHandler,
    GenerationSettings,
    LoadedModel,
    ModelCall,
    call_model,
    finish_image,
    is_out_of_memory,
    out_of_memory,
    plan_calls,
    to_host,
)
from synthgen.generators.planning import plan_shard
from synthgen.pipelines.progress import generation_mark
from synthgen.pipelines.staging import write_staged
from synthgen.schemas.batches import padded_chunks
from synthgen.schemas.failures import failed_copy, failed_sample
from synthgen.schemas.manifest import PlanRound
from synthgen.schemas.plugins import register_carried
from synthgen.schemas.recipe import Recipe
from synthgen.schemas.records import BuildContext, GenerationRequest, Sample, withheld
from synthgen.storage.c2pa_sign import config_signer
from synthgen.storage.codecs import image_codec
from synthgen.storage.faults import maybe_fault
from synthgen.storage.host import usable_cores
from synthgen.validators.base import Check, record_pixel_checks
from synthgen.validators.clip_model import float32_copy
from synthgen.validators.scorers.base import Scorer
from synthgen.validators.scoring import LoadedScorers, Prepared, ScoreSamples, prepare_sample
from synthgen.validators.scoring import score_prepared as score_batch

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "synthgen"
FEED_DEPTH = 1  # model calls whose images may wait for the feeder thread (besides its own)


def scoring_batch(recipe: Recipe) -> int:
    """The device scorers' batch: `scoring.batch_size` (their fixed compute shape)."""
    return recipe.scoring_batch


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to generate, score and stage; small and picklable."""

    recipe: Recipe
    plan_round: PlanRound
    settings: GenerationSettings
    scorers: tuple[Scorer, ...]
    checks: tuple[Check, ...]  # the per-sample checks; pixel checks run with the host work
    out: str
    progress_dir: str | None = None
    host_threads: int = 0  # 0: as many as this process may use cores
    ctx: BuildContext | None = None  # with it, a signing build signs with the host work
    # plug-in classes from outside their packages (a user's codec, source, mode): carried so
    # that a worker process registers them before it looks one up by name
    plugins: tuple[type, ...] = ()

    @property
    def scoring_batch(self) -> int:
        return scoring_batch(self.recipe)

    def threads(self) -> int:
        return self.host_threads or usable_cores()


@dataclass
class Chunk:
    """Consecutive requests of a shard (the recipe's `batch_size`) scored in one call: fixed
    by the plan, so how many scoring calls a build makes never depends on timing."""

    keys: list[str]
    pending: int  # members neither prepared nor failed yet
    prepared: dict[str, Prepared] = field(default_factory=dict)


@dataclass
class ShardJob:
    """One shard between its first model call and its staging file."""

    shard: int
    expected: int
    chunks: dict[str, Chunk] = field(default_factory=dict)  # request key -> its chunk
    samples: list[Sample] = field(default_factory=list)
    calls: int = 0
    splits: int = 0
    failed: int = 0
    scored_calls: int = 0
    score_splits: int = 0
    score_failed: int = 0
    device_ms: float = 0.0  # time spent in this shard's model calls (compare's cost figure)
    error: BaseException | None = None
    signed: dict[str, bytes] = field(default_factory=dict)  # key -> image with credentials
    # the worker's in-flight slots this shard holds; `reclaimed`: given back at its failure
    slots: int = 0
    reclaimed: bool = False
    staged: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> bool:
        """Record a finished sample; True when it was the shard's last."""
        with self.lock:
            self.samples.append(sample)
            return len(self.samples) == self.expected

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.staged.set()


class Worker:
    """One worker process's device, model copies, scorers and host threads (module doc)."""

    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.device = claim_device(spec.settings.device)
        self.settings = dataclasses.replace(spec.settings, device=self.device)
        self.copies: queue.Queue[Any] = queue.Queue()
        handler = DiffusersHandler(self.settings, batch_size=spec.recipe.batch_size)
        for _ in range(self.settings.copies):
            self.copies.put(handler.load_model())
        r = spec.recipe
        self.scorers: LoadedScorers = ScoreSamples(
            list(spec.scorers), self.device, r.model.cpu_threads
        ).load_model()
        shared_clip = functools.partial(float32_copy, self.scorers.models)
        for loaded in list(self.copies.queue):  # guidance can use the scorers' CLIP copy
            if isinstance(loaded, LoadedModel):
                loaded.scorer_clip = shared_clip
        cap_malloc_arenas()  # before the host threads exist
        self.host = ThreadPoolExecutor(spec.threads(), thread_name_prefix="synthgen-host")
        # room for a whole scoring chunk plus the call that completes it, twice over
        self.in_flight = 2 * (self.settings.compute_batch + spec.recipe.batch_size)
        self.slots = threading.BoundedSemaphore(self.in_flight)
        self.ready: deque[tuple[ShardJob, Chunk]] = deque()
        self._scoring = threading.Lock()
        self._progress_lock = threading.Lock()
        self._progress = _progress_file(spec.progress_dir)
        self._reported = False
        self._signing = _signing(spec)
        self._signer = config_signer(self._signing)  # recorded with the images signed here
        self.feed: queue.Queue[tuple[ShardJob, ModelCall, Any] | None] = queue.Queue(FEED_DEPTH)
        threading.Thread(
            target=_feeder, args=(self.feed, weakref.ref(self)), name="synthgen-feed", daemon=True
        ).start()
        logger.info(
            "worker %d: %d model cop%s on %s, %d host threads",
            os.getpid(),
            self.settings.copies,
            "y" if self.settings.copies == 1 else "ies",
            self.device,
            spec.threads(),
        )

    # -- the device loop (the DoFn's thread) ------------------------------------------------
    def generate(self, shard: int, requests: Sequence[GenerationRequest]) -> ShardJob:
        """Run every model call of one shard; its host work, scoring and staging go on after
        this returns (`wait` finishes them)."""
        job = ShardJob(shard, len(requests))
        if not requests:
            self._stage(job)
            return job
        try:
            self._run_calls(job, requests)
        except BaseException as exc:  # the device stopped (out of memory): the build stops,
            job.fail(exc)  # and a retry of the bundle finds every slot free
            self._reclaim(job)
            raise
        return job

    def _run_calls(self, job: ShardJob, requests: Sequence[GenerationRequest]) -> None:
        calls = plan_calls(self.settings, requests)
        # scoring chunks: consecutive requests in call order, so a chunk completes after at
        # most one chunk's worth of calls (the bound on images in flight relies on it)
        order = [r.key for call in calls for r in call.requests]
        n = self.spec.recipe.batch_size
        for start in range(0, len(order), n):
            keys = order[start : start + n]
            job.chunks.update(dict.fromkeys(keys, Chunk(keys, len(keys))))
        for call in calls:
            if job.error is not None:  # the feeder failed this shard: stop spending the device
                break
            self._call(job, call)

    def _call(self, job: ShardJob, call: ModelCall) -> None:
        """One model call, or its halves after a failure; each image goes to host work."""
        job.calls += 1
        pipe = self.copies.get()
        started = time.perf_counter()
        try:
            images = call_model(pipe, self.settings, call)
        except Exception as exc:
            job.device_ms += (time.perf_counter() - started) * 1000
            self.copies.put(pipe)  # before the halves, which take a copy again
            if is_out_of_memory(exc):
                raise out_of_memory(self.settings, exc, "generation") from exc
            self._split(job, call, exc)
            return
        job.device_ms += (time.perf_counter() - started) * 1000
        self.copies.put(pipe)
        self.feed.put((job, call, images))  # waits while FEED_DEPTH calls are unfed

    # -- the feeder (one thread per worker) -----------------------------------------------------
    def _feed(self, item: list[Any]) -> None:
        """A call's images (`item`: job, call, images; emptied here, so that nothing else
        holds the images): quantised, each handed to host work; then what is ready scored."""
        job, call, images = item
        item.clear()
        if job.error is not None:
            return  # the shard has failed: its remaining calls are not fed
        try:
            out = to_host(images, self.settings)
        except BaseException as exc:
            del images
            if is_out_of_memory(exc):
                job.fail(out_of_memory(self.settings, exc, "generation"))
                return
            for request in call.requests:  # each image of the call is a failed sample
                logger.warning("sample %s failed: %s", request.key, type(exc).__name__)
                self._unprepared(job, request.key, failed_sample(request, exc))
            return
        del images
        try:
            for i, request in enumerate(call.requests):
                self._take_slot(job)
                self.host.submit(self._host_work, job, request, out.pixels[i], out.finite[i])
            self.score_ready()
        except BaseException as exc:
            job.fail(exc)

    def _split(self, job: ShardJob, call: ModelCall, exc: BaseException) -> None:
        requests = call.requests
        if len(requests) == 1:
            job.failed += 1
            key, why = requests[0].key, type(exc).__name__
            logger.warning("generation failed for sample %s: %s", key, why)
            self._unprepared(job, key, failed_sample(requests[0], exc))
            return
        job.splits += 1
        logger.warning(
            "generation failed for a call of %d (%s): trying it in halves",
            len(requests),
            type(exc).__name__,
        )
        half = (len(requests) + 1) // 2
        for part in (requests[:half], requests[half:]):
            for padded, real in padded_chunks(part, self.settings.compute_batch):
                self._call(job, ModelCall(padded, real, call.params))

    def _take_slot(self, job: ShardJob) -> None:
        """Wait for room between the model and the scorers, scoring what is ready meanwhile
        (the feeder is also a thread that scores); the slot is the shard's until released."""
        while not self.slots.acquire(timeout=0.005):
            self.score_ready()
        with job.lock:
            if not job.reclaimed:
                job.slots += 1
                return
        self.slots.release()  # the shard has failed: its work is dropped

    def _release(self, job: ShardJob) -> None:
        """One of `job`'s slots back (none once its slots were reclaimed)."""
        with job.lock:
            if job.reclaimed:
                return
            job.slots -= 1
        self.slots.release()

    def _reclaim(self, job: ShardJob) -> None:
        """A failed shard's slots back at once: images of it that are still being prepared
        or wait in a chunk that will never complete (its later calls were not fed) would
        otherwise hold them for the worker's life, and a worker Beam reuses for a retry
        would have that much less room, down to none."""
        with job.lock:
            held, job.slots, job.reclaimed = job.slots, 0, True
        for _ in range(held):
            self.slots.release()

    # -- host work (pool threads) -----------------------------------------------------------
    def _host_work(self, job: ShardJob, request: GenerationRequest, pixels: Any, ok: bool) -> None:
        try:
            sample, pixels = finish_image(request, pixels, ok, self.settings)
            image = pixels  # a clip: the frames it stores, (F, H, W, C)
            if not self.settings.video:
                image, pixels = self._as_stored(sample, pixels)
            sample = record_pixel_checks(sample, pixels, self.spec.checks)
            prepared = prepare_sample(self.scorers, sample, image)
            self._sign(job, sample)
        except Exception as exc:
            logger.warning("sample %s failed: %s", request.key, type(exc).__name__)
            self._release(job)
            self._unprepared(job, request.key, failed_sample(request, exc))
            return
        chunk = job.chunks[request.key]
        with job.lock:
            chunk.prepared[request.key] = prepared
            chunk.pending -= 1
            complete = chunk.pending == 0
        if complete:
            self.ready.append((job, chunk))

    def _as_stored(self, sample: Sample, pixels: Any) -> tuple[Any, Any]:
        """An image as its file decodes, and its pixels: the pixels themselves (a lossless
        codec), or the file decoded once (lossy: measure what is stored)."""
        codec = image_codec(self.settings.image_format)
        if codec.lossless:
            from PIL import Image

            return Image.fromarray(pixels), pixels  # what the file decodes to, not decoded
        import numpy as np

        image = codec.decode(sample.media.data)
        return image, np.asarray(image)

    def _sign(self, job: ShardJob, sample: Sample) -> None:
        """A signing build: the image with its C2PA credentials, made now, beside the device
        (whether it is accepted is decided later; the writer takes this copy if it is). A
        failure leaves the signing to the writer, which reports it."""
        if self._signing is None or self.spec.ctx is None or withheld(sample):
            return
        from synthgen.storage.c2pa_sign import signed_sample

        try:
            data = signed_sample(sample, self.spec.ctx, self._signing)
        except Exception as exc:
            logger.debug("sample %s: signing left to the writer: %s", sample.request.key, exc)
            return
        with job.lock:
            job.signed[sample.request.key] = data

    def _unprepared(self, job: ShardJob, key: str, failed: Sample) -> None:
        """A sample that failed before scoring: final now; its chunk goes on without it."""
        chunk = job.chunks[key]
        with job.lock:
            chunk.pending -= 1
            complete = chunk.pending == 0 and bool(chunk.prepared)
        self._finished(job, failed)
        if complete:
            self.ready.append((job, chunk))

    # -- device scorers (the feeder, and a DoFn thread waiting for its shard) -----------------
    def score_ready(self) -> None:
        """Score every chunk whose members are all prepared (the device scorers, one call
        per chunk; inside, fixed-shape batches of `scoring.batch_size`).

        A chunk's failure (scoring out of device memory) fails the chunk's own shard and
        is not raised here: the thread scoring it may be feeding or waiting for another
        shard, and the shard that failed raises it from its `wait`, after giving back its
        slots."""
        while True:
            with self._scoring:
                if not self.ready:
                    return
                job, chunk = self.ready.popleft()
                if job.error is not None:
                    continue  # a failed shard's chunk: not scored (its slots are reclaimed)
                items = [(job, chunk.prepared[k]) for k in chunk.keys if k in chunk.prepared]
                try:
                    scored = self._score(items)
                except Exception as exc:
                    job.fail(exc)  # the chunk's own shard, whichever thread scores it
                    continue
            try:
                for sample in scored:
                    self._release(job)
                    self._finished(job, sample)
            except Exception as exc:
                job.fail(exc)

    def _score(self, items: list[tuple[ShardJob, Prepared]]) -> list[Sample]:
        """The device scorers on one batch, or its halves after a failure."""
        items[0][0].scored_calls += 1
        try:
            for _, p in items:
                maybe_fault("score", p.sample.request.key)
            return score_batch(self.scorers, [p for _, p in items])
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(self.settings, exc, "scoring") from exc
            if len(items) == 1:
                job, p = items[0]
                job.score_failed += 1
                logger.warning("score failed for sample %s: %s", p.sample.request.key, exc)
                return [failed_copy(p.sample, exc)]
            items[0][0].score_splits += 1
            half = (len(items) + 1) // 2
            return [*self._score(items[:half]), *self._score(items[half:])]

    # -- a shard's end ------------------------------------------------------------------------
    def _finished(self, job: ShardJob, sample: Sample) -> None:
        self._note(generation_mark(sample, self.spec.checks))
        if job.add(sample):
            self.host.submit(self._stage, job)

    def _stage(self, job: ShardJob) -> None:
        try:
            maybe_fault("stage", f"{job.shard:05d}")
            signer = self._signer if job.signed else None
            write_staged(Path(self.spec.out), job.shard, job.samples, job.signed, signer)
            job.samples, job.signed = [], {}  # on disk now: the memory goes
        except BaseException as exc:
            job.fail(exc)
            return
        job.staged.set()

    def wait(self, job: ShardJob) -> None:
        """Finish a shard: score its last images as they are prepared, until it is staged."""
        while not job.staged.wait(timeout=0.002):
            self.score_ready()
        if job.error is not None:
            self._reclaim(job)
            raise job.error

    def __del__(self) -> None:
        # the feeder ends; if the queue is full, it ends once it finds this worker gone. No
        # module globals here: at interpreter exit they may already be None.
        feed = self.__dict__.get("feed")
        try:
            if feed is not None:
                feed.put_nowait(None)
        except Exception:
            pass

    def first_report(self) -> bool:
        """True once per worker: the first finished shard counts the worker on its device."""
        with self._progress_lock:
            first, self._reported = not self._reported, True
        return first

    def _note(self, letter: str) -> None:
        if self._progress is not None:
            with self._progress_lock:
                self._progress.write(letter + "\n")


def _signing(spec: StageSpec) -> Any:
    """The build's signing config (written before generation), or None."""
    if spec.ctx is None:
        return None
    from synthgen.storage.c2pa_sign import read_signing_config

    return read_signing_config(Path(spec.out))


def _feeder(
    feed: queue.Queue[tuple[ShardJob, ModelCall, Any] | None], worker: weakref.ref[Worker]
) -> None:
    """The feeder thread's loop: it holds its worker only while feeding a call."""
    while True:
        try:
            item = feed.get(timeout=1.0)
        except queue.Empty:
            if worker() is None:
                return
            continue
        if item is None:
            return
        w = worker()
        if w is None:
            return
        args = list(item)
        del item
        w._feed(args)  # empties args: the images are held by the feeder's call alone
        del w, args


_M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2


def cap_malloc_arenas() -> bool:
    """At most ARENAS glibc malloc arenas for the threads started from now on; True if set.

    glibc gives every new thread its own arena (up to 8 per core), and the host threads
    allocate and free an image's buffers in a different thread from the one that made them:
    the arenas fragment, and a worker's resident memory grew with the number of images it
    made (measured: peak RSS 1.23x from 2,000 to 20,000 images; with two arenas the peak
    stayed flat at the same speed). Nothing is done where MALLOC_ARENA_MAX was chosen, or
    off glibc; only memory use changes, never a computed value.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, ARENAS))


def _progress_file(progress_dir: str | None) -> IO[str] | None:
    """A per-worker file the driver's progress display counts letters in."""
    if progress_dir and os.path.isdir(progress_dir):
        path = Path(progress_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.log"
        return path.open("a", buffering=1, encoding="ascii")
    return None


class GenerateShards(beam.DoFn):
    """Shard id -> its staging file, through this process's `Worker` (the module doc).

    Emits nothing: the staging files are the output (runners may drop what a DoFn emits at
    bundle end, and nothing downstream needs the ids). A thread keeps at most one earlier
    shard in flight; every shard of a bundle is staged before the bundle ends.
    """

    def __init__(self, spec: StageSpec):
        self._spec = spec
        self._shared = shared.Shared()
        self._handle: _SharedWorker | None = None
        self._worker: Worker | None = None
        self._pending: list[ShardJob] = []
        ns = METRICS_NAMESPACE
        self._counters = {
            name: Metrics.counter(ns, name)
            for name in (
                "generate_calls",
                "generate_splits",
                "generate_failed",
                "score_calls",
                "score_splits",
                "score_failed",
                "staged",
                "generated",
                "device_ms",
            )
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_worker"] = None
        state["_handle"] = None
        state["_pending"] = []
        return state

    def setup(self) -> None:
        spec = self._spec
        register_carried(spec.plugins)  # a user's codec / source / mode, by name here too
        # every thread's copy of this DoFn shares one Worker; holding the handle keeps it
        self._handle = self._shared.acquire(lambda: _SharedWorker(spec))
        self._worker = self._handle.worker
        self._pending = []

    def process(self, shard: int) -> Iterator[Any]:
        if self._worker is None:
            self.setup()
        assert self._worker is not None
        requests = plan_shard(self._spec.recipe, shard, **self._spec.plan_round.plan_kwargs())
        try:
            self._pending.append(self._worker.generate(shard, requests))
            while len(self._pending) > 1:  # the previous shard's host work had these calls
                self._collect(self._pending.pop(0))
        except DeviceOutOfMemory:  # generating, or scoring a shard collected here
            self._keep_what_was_generated()
            raise
        return iter(())

    def _keep_what_was_generated(self) -> None:
        """Before the build stops: stage the shards whose model calls all ran."""
        for job in self._pending:
            try:
                self._collect(job)
            except Exception as exc:  # the stop's own error is the one to report
                logger.warning("shard %05d could not be staged: %s", job.shard, exc)
        self._pending = []

    def finish_bundle(self) -> None:
        try:
            while self._pending:
                self._collect(self._pending.pop(0))
        except DeviceOutOfMemory:
            self._keep_what_was_generated()
            raise

    def _collect(self, job: ShardJob) -> None:
        assert self._worker is not None
        started = time.monotonic()
        self._worker.wait(job)
        logger.debug("shard %05d staged (waited %.2f s)", job.shard, time.monotonic() - started)
        c = self._counters
        c["generate_calls"].inc(job.calls)
        c["generate_splits"].inc(job.splits)
        c["generate_failed"].inc(job.failed)
        c["score_calls"].inc(job.scored_calls)
        c["score_splits"].inc(job.score_splits)
        c["score_failed"].inc(job.score_failed)
        c["staged"].inc(job.expected)
        c["generated"].inc(job.expected)
        c["device_ms"].inc(round(job.device_ms))
        # where the work ran: each worker's device, and the device its scorers loaded on
        w = self._worker
        Metrics.counter(METRICS_NAMESPACE, f"calls_on_{_safe(w.device)}").inc(job.calls)
        scorer_device = _safe(w.scorers.models.device)
        Metrics.counter(METRICS_NAMESPACE, f"score_calls_on_{scorer_device}").inc(job.scored_calls)
        if w.first_report():
            Metrics.counter(METRICS_NAMESPACE, f"workers_on_{_safe(w.device)}").inc()


class _SharedWorker:
    """The object Beam's `Shared` holds (it must take a weak reference)."""

    def __init__(self, spec: StageSpec):
        self.worker = Worker(spec)


def _safe(device: str) -> str:
    return device.replace(":", "_")
