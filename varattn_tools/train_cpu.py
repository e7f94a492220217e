"""Data-parallel fairseq training on CPUs: one gloo process per rank.

    python -m varattn_tools.train_cpu --nprocs 2 -- DATA --user-dir fairseq_varattn \
        --arch varattn_lstm --criterion varattn_elbo ... --save-dir ckpt

fairseq's own launcher spawns one process per GPU and starts none on a
machine without CUDA.  This starts ``--nprocs`` ``fairseq-train`` processes
on this host, each with

    --distributed-world-size N --distributed-rank R --distributed-no-spawn
    --distributed-init-method tcp://127.0.0.1:PORT --distributed-backend gloo
    --ddp-backend legacy_ddp --cpu

``legacy_ddp`` all-reduces every gradient buffer, including those of
parameters a step did not use (the inference network when a criterion does
not need it, the soft-attention baseline), which torch's DDP would reject
unless told to look for unused parameters.  Rank 0 prints to this terminal;
the others log to SAVE_DIR/rank-R.log.  If any rank fails, the others are
stopped and the launcher exits with that rank's status.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from varattn_tools.experiments import cpu_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_command(train_args, rank, nprocs, port):
    return [
        sys.executable,
        "-m",
        "fairseq_cli.train",
        *train_args,
        "--distributed-world-size",
        str(nprocs),
        "--distributed-rank",
        str(rank),
        "--distributed-init-method",
        f"tcp://127.0.0.1:{port}",
        "--distributed-backend",
        "gloo",
        "--distributed-no-spawn",
        "--ddp-backend",
        "legacy_ddp",
        "--cpu",
    ]


def save_dir_of(train_args):
    for i, arg in enumerate(train_args):
        if arg == "--save-dir" and i + 1 < len(train_args):
            return train_args[i + 1]
        if arg.startswith("--save-dir="):
            return arg.split("=", 1)[1]
    return "checkpoints"  # fairseq's default


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, default=2, help="number of ranks (processes)")
    parser.add_argument("--port", type=int, help="rendezvous port (default: a free one)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then fairseq-train's arguments")
    opts = parser.parse_args(argv)
    train_args = opts.train_args[1:] if opts.train_args[:1] == ["--"] else opts.train_args
    if opts.nprocs < 1:
        parser.error("--nprocs must be >= 1")
    if not train_args:
        parser.error("give fairseq-train's arguments after --")
    clashing = [
        a
        for a in train_args
        if a.split("=")[0]
        in (
            "--distributed-world-size",
            "--distributed-rank",
            "--distributed-init-method",
            "--distributed-backend",
            "--distributed-no-spawn",
            "--ddp-backend",
        )
    ]
    if clashing:
        parser.error(f"the launcher sets {clashing} itself; remove them")
    port = opts.port or free_port()
    save_dir = save_dir_of(train_args)
    os.makedirs(save_dir, exist_ok=True)
    # each rank computes with its own share of the cores
    threads = max(1, (os.cpu_count() or 1) // opts.nprocs)
    env = cpu_env(threads=os.environ.get("OMP_NUM_THREADS", threads))

    procs, logs = [], []
    for rank in range(opts.nprocs):
        if rank == 0:
            out = None
        else:
            out = open(os.path.join(save_dir, f"rank-{rank}.log"), "w")
            logs.append(out)
        procs.append(
            subprocess.Popen(
                rank_command(train_args, rank, opts.nprocs, port),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        )
    status = 0
    try:
        while procs:
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                if code != 0 and status == 0:
                    status = code
                    print(
                        f"launch_cpu: a rank exited with status {code}; stopping the others "
                        f"(see {save_dir}/rank-*.log)",
                        file=sys.stderr,
                    )
                    for other in procs:
                        other.send_signal(signal.SIGTERM)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        status = 130
    finally:
        for f in logs:
            f.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
