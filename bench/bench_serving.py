"""Benchmark the model server: requests/s and latency at several concurrencies, against the bare network.

    python bench/bench_serving.py --run runs/NAME            # a trained run
    python bench/bench_serving.py                            # untrained vgg13 at 64 px: speed only
    python bench/bench_serving.py --run pretrained --photos ../shared/data/faces   # photos: detection included

It packages the run, starts a real multi-model-server on free loopback ports
(the repository's config.properties), registers the model with MMS batching
(``--batch-size``, ``--max-batch-delay``), and sends ``--requests`` requests at
each concurrency (1, 8, 32 by default) from that many client threads. By
default every request is a 48x48 synthetic face with ``X-Whole-Image: 1``
(one face, no detection), so the figures compare with the network's bare
forward throughput at the same batch size, measured in the same run before
the server starts: the ratio says how much of the network's speed survives
HTTP, JSON, image decoding, preprocessing and batching. The ceiling of the
served figures is measured in the same run too: the whole pipeline
(``FacePredictor.predict_bytes``: decode, detect, crop, forward, answer) in as
many processes as the server has workers, without HTTP.

The clients share the machine with the server: on a 2-core machine the
figures are a floor.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def _imports():
    """ferlib and MXNet, imported after OMP_NUM_THREADS is set (OpenMP reads it once, at start)."""
    global ferlib, EMOTIONS, fer_model, FacePredictor, ModelServer, package_run, mx
    import ferlib  # before mxnet
    import ferlib.photos
    from ferlib import EMOTIONS
    from ferlib import model as fer_model
    from ferlib.serving import FacePredictor, ModelServer, package_run

    import mxnet as mx


def untrained_run(out_dir, model="vgg13", input_size=64):
    """An exported network with random weights: the speed of a trained one, none of its accuracy."""
    net = fer_model.get_model(model, input_size=input_size)
    net.initialize()
    fer_model.export_net(net, out_dir, input_size)
    (Path(out_dir) / "config.json").write_text(json.dumps({
        "model": model, "model_kwargs": {"input_size": input_size}, "mode": "untrained",
        "input_size": input_size, "emotions": list(EMOTIONS)}))
    return Path(out_dir)


def bare_forward(run_dir, batch_size, seconds=5.0):
    """Images/s of the exported network alone (preprocessed input already in memory)."""
    predictor = FacePredictor(run_dir)
    size = predictor.input_size
    x = mx.nd.array(np.random.default_rng(0).normal(size=(batch_size, 1, size, size)).astype(np.float32))
    for _ in range(3):
        predictor.net(x).wait_to_read()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.net(x).wait_to_read()
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def _pipeline_worker(run_dir, bodies, whole_image, batch_size, seconds, threads, detector, barrier, results):
    """One process of :func:`pipeline_ceiling`: FacePredictor.predict_bytes on batches of ``bodies``."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _imports()
    predictor = FacePredictor(run_dir, settings={"detector": detector} if detector else None)
    predictor.predict_bytes(bodies[:batch_size], whole_image)  # warm-up
    barrier.wait()  # every process times the same seconds
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = [bodies[(count + k) % len(bodies)] for k in range(batch_size)]
        assert all(status == 200 for status, _ in predictor.predict_bytes(batch, whole_image))
        count += batch_size
    results.put(count / (time.perf_counter() - start))


def pipeline_ceiling(run_dir, bodies, whole_image, batch_size, processes, seconds, threads, detector=None):
    """Requests/s of the whole in-process pipeline (decode, detect, crop, forward, answer) in ``processes``
    processes like the server's workers, with no HTTP: the most the server could answer. ``detector``
    changes the served settings' face detector, as ``package_run(detector=...)`` does."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh MXNet in each, as in MMS workers
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_pipeline_worker, args=(str(run_dir), bodies, whole_image, batch_size,
                                                              seconds, threads, detector, barrier, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    rates = [results.get(timeout=seconds + 300) for _ in workers]
    for w in workers:
        w.join()
    return sum(rates)


def load(server, bodies, concurrency, num_requests, whole_image):
    """Send ``num_requests`` from ``concurrency`` threads; returns (requests/s, latencies in ms, errors)."""
    import requests

    url = f"{server.inference_url}/predictions/fer"
    headers = {"Content-Type": "application/octet-stream"}
    if whole_image:
        headers["X-Whole-Image"] = "1"
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(num_requests))

    def client():
        with requests.Session() as session:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                start = time.perf_counter()
                reply = session.post(url, data=bodies[k % len(bodies)], headers=headers, timeout=300)
                elapsed = (time.perf_counter() - start) * 1000.0
                with lock:
                    latencies.append(elapsed)
                    if reply.status_code != 200:
                        errors.append(f"{reply.status_code} {reply.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return num_requests / wall, np.array(latencies), errors


def serve_levels(mar, bodies, whole_image, levels, num_requests, args, workers, title, forward_bs, ceiling):
    """Start a real multi-model-server on free loopback ports with the archive ``mar`` and ``workers``
    workers, load it at each concurrency of ``levels``, stop it; one row of figures per level."""
    server = ModelServer(mar.parent, inference_port="free", worker_threads=args.threads)
    rows = []
    try:
        server.start()
        server.register(mar.name, name="fer", batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                        initial_workers=workers)
        load(server, bodies, 2, 16, whole_image)  # warm-up: graph shapes, connections
        print(title)
        print(f"{'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'req/s / forward':>16} "
              f"{'req/s / in-process':>19}")
        for concurrency in levels:
            rps, latencies, errors = load(server, bodies, concurrency, num_requests, whole_image)
            row = {"concurrency": concurrency, "requests_per_s": rps,
                   "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
                   "errors": len(errors), "ratio_to_forward": rps / forward_bs, "ratio_to_pipeline": rps / ceiling}
            rows.append(row)
            print(f"{concurrency:>8} {rps:>8.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
                  f"{len(errors):>7} {row['ratio_to_forward']:>16.3f} {row['ratio_to_pipeline']:>19.2f}")
            for message in sorted(set(errors)):
                print(f"{'':>8} error x{errors.count(message)}: {message}")
    finally:
        server.stop()
    return rows


def encode_png(image):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="training run folder (default: an untrained network)")
    parser.add_argument("--model", default="vgg13", help="untrained network to time when no --run")
    parser.add_argument("--input-size", type=int, default=64, help="its input size")
    parser.add_argument("--photos", default=None, help="send the photos of this folder (face detection) instead "
                                                       "of crops; samples: the astronaut and Grace Hopper")
    parser.add_argument("--concurrency", default="1,8,32", help="client threads, comma separated")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="MMS batch size (default: ferlib serve's; a batch goes to one worker)")
    parser.add_argument("--max-batch-delay", type=int, default=10, help="MMS max batch delay (ms)")
    parser.add_argument("--workers", type=int, default=None, help="MMS workers (default: ferlib serve's)")
    parser.add_argument("--baseline", action="store_true",
                        help="with --photos: also serve the set-up before the choice of detector (the Haar cascade, "
                             "one worker) in the same run, and print the ratios")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads of the network, here and in each server worker (1: more workers "
                             "for more cores; on a busy machine several threads per process contend badly)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    _imports()
    if args.workers is None:
        from ferlib.serving.server import DEFAULT_WORKERS
        args.workers = DEFAULT_WORKERS
    if args.batch_size is None:
        from ferlib.serving.server import DEFAULT_BATCH_SIZE
        args.batch_size = DEFAULT_BATCH_SIZE
    num_requests = 40 if args.quick else args.requests
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        run_dir = Path(args.run) if args.run else untrained_run(Path(tmp) / "run", args.model, args.input_size)
        store = Path(tmp) / "store"
        package_run(run_dir, store / "fer.mar")
        if args.photos == "samples":
            bodies, whole_image = list(ferlib.photos.sample_photos().values()), False
            payload = f"the {len(bodies)} sample photos (astronaut, Grace Hopper)"
        elif args.photos:
            paths = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            bodies, whole_image, payload = [p.read_bytes() for p in paths], False, f"{len(paths)} photos"
        else:
            bodies = [encode_png(face) for face in ferlib.synth.make_faces(32, seed=0).images]
            whole_image, payload = True, "48x48 face crops, X-Whole-Image: 1"
        threads = os.environ.get("OMP_NUM_THREADS", "?")
        forward_seconds, ceiling_seconds = (2.0, 3.0) if args.quick else (5.0, 10.0)
        forward_bs = bare_forward(run_dir, args.batch_size, seconds=forward_seconds)
        forward_1 = forward_bs if args.batch_size == 1 else bare_forward(run_dir, 1, seconds=forward_seconds)
        print(f"network {'(untrained) ' if not args.run else ''}from {run_dir}; OMP_NUM_THREADS={threads}, "
              f"{os.cpu_count()} CPUs")
        print(f"bare forward: {forward_bs:.0f} images/s at batch {args.batch_size}"
              + ("" if args.batch_size == 1 else f", {forward_1:.0f} at batch 1"))
        ceiling = pipeline_ceiling(run_dir, bodies, whole_image, args.batch_size, args.workers,
                                   seconds=ceiling_seconds, threads=args.threads)
        print(f"in-process pipeline ({payload}, no HTTP), {args.workers} process(es) like the workers: "
              f"{ceiling:.1f} requests/s")
        print(f"payload: {payload}; {num_requests} requests per level; MMS batch {args.batch_size}, "
              f"delay {args.max_batch_delay} ms")
        rows = serve_levels(store / "fer.mar", bodies, whole_image, levels, num_requests, args, args.workers,
                            f"{args.workers} worker(s)", forward_bs, ceiling)
        baseline, baseline_ceiling = [], None
        if args.baseline and not whole_image:
            # The set-up before ferlib had a choice of detector: the Haar cascade, one worker.
            haar = {"backend": "haar"}
            package_run(run_dir, store / "fer-haar.mar", detector=haar)
            baseline_ceiling = pipeline_ceiling(run_dir, bodies, whole_image, args.batch_size, 1,
                                                seconds=ceiling_seconds, threads=args.threads,
                                                detector=haar)
            print(f"baseline's in-process pipeline (Haar cascade), 1 process: {baseline_ceiling:.1f} requests/s")
            baseline = serve_levels(store / "fer-haar.mar", bodies, whole_image, levels, num_requests, args, 1,
                                    "baseline: Haar cascade, 1 worker", forward_bs, baseline_ceiling)
            print(f"{'clients':>8} {'x baseline req/s':>17}")
            for row, base in zip(rows, baseline):
                row["ratio_to_baseline"] = row["requests_per_s"] / base["requests_per_s"]
                print(f"{row['concurrency']:>8} {row['ratio_to_baseline']:>17.2f}")
    result = {"payload": payload, "batch_size": args.batch_size, "max_batch_delay_ms": args.max_batch_delay,
              "workers": args.workers, "omp_num_threads": threads, "cpus": os.cpu_count(),
              "forward_images_per_s": forward_bs, "forward_images_per_s_batch1": forward_1,
              "pipeline_requests_per_s": ceiling, "baseline_pipeline_requests_per_s": baseline_ceiling,
              "trained": bool(args.run), "levels": rows, "baseline_levels": baseline}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
