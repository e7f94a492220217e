"""Long jobs on clusters: resume after a kill, data parallelism over gloo,
crashes while a checkpoint is written, unreadable checkpoints."""

import os
import re
import signal
import subprocess

import pytest
import torch
from helpers import PYTHON, REPO, USER_DIR, cli_env, run_cli, valid_metric, validate

import fairseq_varattn  # noqa: F401  (safe globals for torch.load)
from varattn_tools.variants import train_options

# dropout 0: ranks and micro-batches draw different dropout masks, and the
# comparisons below are between different process layouts
MODEL = [
    "--arch",
    "varattn_lstm_tiny",
    "--dropout",
    "0",
    "--optimizer",
    "adam",
    "--lr",
    "0.005",
    "--clip-norm",
    "5",
    "--num-workers",
    "0",
    "--log-format",
    "simple",
    "--log-interval",
    "1",
    "--seed",
    "7",
    "--no-epoch-checkpoints",
    "--required-batch-size-multiple",
    "1",
]


def checkpoint(path):
    return torch.load(path, map_location="cpu")  # weights_only=True, the torch >= 2.6 default


def num_updates(path):
    return checkpoint(path)["optimizer_history"][-1]["num_updates"]


def validated_loss(data_dir, ckpt):
    return valid_metric(validate(data_dir, ckpt, max_tokens=4000), "loss")


# -- resume ----------------------------------------------------------------------------------
# a sampling estimator (REINFORCE, 2 samples) and a KL weight still annealing
# when the kill comes: the resumed run must draw the same samples (fairseq
# reseeds every update from --seed and the update count) and weigh the KL alike
RESUME_ARGS = [
    "--attention",
    "categorical",
    "--inference-network",
    "birnn",
    "--criterion",
    "varattn_elbo",
    "--estimator",
    "reinforce",
    "--num-samples",
    "2",
    "--train-baseline",
    "--kl-warmup-updates",
    "8",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "6",
    "--max-tokens",
    "800",
    "--disable-validation",
    "--save-interval-updates",
    "4",
    "--max-update",
    "10",
]


def test_resume_after_a_kill_reaches_the_uninterrupted_result(data_dir, tmp_path):
    straight = str(tmp_path / "straight")
    run_cli(["fairseq_cli.train", data_dir, "--user-dir", USER_DIR, *MODEL, *RESUME_ARGS, "--save-dir", straight])

    split = str(tmp_path / "split")
    cmd = [
        PYTHON,
        "-m",
        "fairseq_cli.train",
        data_dir,
        "--user-dir",
        USER_DIR,
        *MODEL,
        *RESUME_ARGS,
        "--save-dir",
        split,
    ]
    env = cli_env()  # as run_cli gave the uninterrupted run
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # kill -9 as soon as the update-4 checkpoint is on disk
        seen.append(line)
        if re.search(r"Saved checkpoint .* \(epoch 1 @ 4 updates", line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    last = os.path.join(split, "checkpoint_last.pt")
    assert num_updates(last) in (4, 8)  # 8 if the kill arrived after the next save
    resumed = run_cli(
        ["fairseq_cli.train", data_dir, "--user-dir", USER_DIR, *MODEL, *RESUME_ARGS, "--save-dir", split]
    )
    assert re.search(
        r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ [48] updates\)", resumed.stdout + resumed.stderr
    )

    a, b = checkpoint(os.path.join(straight, "checkpoint_last.pt")), checkpoint(last)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 10
    # the learning-rate schedule and Adam's moments continued where they stopped
    assert a["last_optimizer_state"]["param_groups"][0]["lr"] == pytest.approx(
        b["last_optimizer_state"]["param_groups"][0]["lr"], rel=1e-9
    )
    assert a["optimizer_history"][-1]["lr_scheduler_state"] == b["optimizer_history"][-1]["lr_scheduler_state"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # same validation loss: fairseq logs it to 3 decimals, so one unit of rounding either way
    assert (
        abs(validated_loss(data_dir, os.path.join(straight, "checkpoint_last.pt")) - validated_loss(data_dir, last))
        < 2e-3
    )


def _epoch_batches(task, dataset, built_at, epoch):
    """The sentence ids of each batch of ``epoch``, from an iterator built at ``built_at``
    (1: a run that went on; ``epoch``: a run resumed from the end of the previous epoch)."""
    task.dataset_to_epoch_iter = {}
    itr = task.get_batch_iterator(dataset, max_tokens=800, seed=7, epoch=built_at)
    while itr.next_epoch_idx < epoch:
        for _ in itr.next_epoch_itr(shuffle=True):
            pass
    return [tuple(sorted(batch["id"].tolist())) for batch in itr.next_epoch_itr(shuffle=True)]


def test_a_resume_at_an_epoch_boundary_regroups_the_batches(data_dir):
    """What examples/translation/README.md says of resumed runs: fairseq's translation
    task forms batches once, with the seed plus the epoch its iterator starts at, and
    later epochs only reorder them; so a run resumed after epoch 1 trains epoch 2 on
    other batches than a run that went on (the resume test above kills mid-epoch,
    where the batches are the same)."""
    from fairseq import options
    from fairseq.tasks.translation import TranslationTask

    args = options.parse_args_and_arch(
        options.get_training_parser(), [data_dir, "--task", "translation", "--arch", "lstm"]
    )
    task = TranslationTask.setup_task(args)
    task.load_dataset("train")
    dataset = task.dataset("train")
    went_on = [_epoch_batches(task, dataset, 1, epoch) for epoch in (1, 2)]
    resumed = _epoch_batches(task, dataset, 2, 2)
    assert went_on[0] != went_on[1] and sorted(went_on[0]) == sorted(went_on[1])  # reordered only
    assert sorted(resumed) == sorted(_epoch_batches(task, dataset, 2, 2))  # deterministic
    shared = set(resumed) & set(went_on[1])
    assert len(shared) < len(resumed) / 2, (len(shared), len(resumed))


# -- a crash while a checkpoint is being written ------------------------------------------
CRASH_ON_SECOND_SAVE = """
import os, sys
import fairseq.checkpoint_utils as cu
original = cu._torch_persistent_save
calls = [0]
def crash_half_way(obj, f):
    calls[0] += 1
    if calls[0] == 2:  # write half the bytes, then die without cleanup
        import io, torch
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os._exit(137)
    return original(obj, f)
cu._torch_persistent_save = crash_half_way
from fairseq_cli.train import cli_main
sys.argv = ["fairseq-train"] + sys.argv[1:]
cli_main()
"""


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_intact(data_dir, tmp_path):
    save = str(tmp_path / "crash")
    args = [
        data_dir,
        "--user-dir",
        USER_DIR,
        *MODEL,
        "--attention",
        "categorical",
        "--criterion",
        "varattn_marginal",
        "--max-tokens",
        "800",
        "--disable-validation",
        "--save-interval-updates",
        "2",
        "--max-update",
        "6",
        "--no-last-checkpoints",
        "--save-dir",
        save,
    ]
    env = cli_env()
    proc = subprocess.run(
        [PYTHON, "-c", CRASH_ON_SECOND_SAVE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 137, proc.stdout[-2000:] + proc.stderr[-2000:]
    previous = os.path.join(save, "checkpoint_1_2.pt")
    partial = os.path.join(save, "checkpoint_1_4.pt.tmp")
    assert os.path.getsize(partial) > 0 and not os.path.exists(partial[:-4])
    with pytest.raises(Exception):
        checkpoint(partial)  # the half-written file is not mistaken for a checkpoint
    assert num_updates(previous) == 2
    # training restarts from the intact checkpoint
    run_cli(["fairseq_cli.train", *args[:-2], "--save-dir", save, "--restore-file", previous])
    assert num_updates(os.path.join(save, "checkpoint_1_6.pt")) == 6


def test_a_truncated_checkpoint_is_a_clear_error(data_dir, tmp_path):
    save = str(tmp_path / "ok")
    run_cli(
        [
            "fairseq_cli.train",
            data_dir,
            "--user-dir",
            USER_DIR,
            *MODEL,
            "--max-tokens",
            "800",
            "--disable-validation",
            "--max-update",
            "1",
            "--save-dir",
            save,
        ]
    )
    good = os.path.join(save, "checkpoint_last.pt")
    bad = str(tmp_path / "truncated.pt")
    with open(good, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:5000])
    proc = run_cli(
        [
            "fairseq_cli.generate",
            data_dir,
            "--user-dir",
            USER_DIR,
            "--path",
            bad,
            "--gen-subset",
            "valid",
            "--beam",
            "2",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert re.search(r"zip archive|central directory|truncated|EOF", proc.stderr + proc.stdout), proc.stderr[-1500:]


# -- data parallelism on CPUs ----------------------------------------------------------------
def _train_two_ways(data_dir, tmp_path, name, extra=()):
    common = [
        data_dir,
        "--user-dir",
        USER_DIR,
        *MODEL,
        *train_options(name),
        *extra,
        "--max-tokens",
        "600",
        "--disable-validation",
        "--max-update",
        "3",
    ]
    one = str(tmp_path / f"{name}-one")
    single = run_cli(["fairseq_cli.train", *common, "--update-freq", "2", "--save-dir", one])
    two = str(tmp_path / f"{name}-two")
    launch = run_cli(["varattn_tools.train_cpu", "--nprocs", "2", "--", *common, "--save-dir", two], timeout=600)
    assert "distributed init (rank 0)" in launch.stdout + launch.stderr
    logs = (_update_logs(single.stdout + single.stderr), _update_logs(launch.stdout + launch.stderr))
    return (
        checkpoint(os.path.join(one, "checkpoint_last.pt")),
        checkpoint(os.path.join(two, "checkpoint_last.pt")),
        logs,
    )


def _update_logs(text):
    """Per update: (loss, target tokens, sentences) as fairseq logs them (--log-interval 1)."""
    return [
        (float(loss), float(wpb), float(bsz))
        for loss, wpb, bsz in re.findall(r"\| train_inner \|.*? loss=([0-9.]+),.*? wpb=([0-9.]+), bsz=([0-9.]+)", text)
    ]


@pytest.mark.parametrize("name", ["soft", "marginal"])
def test_two_gloo_ranks_equal_one_process_with_twice_the_batch(data_dir, tmp_path, name):
    """Rank r takes batches r, r+2, ...; one process with --update-freq 2 takes
    the same two batches per update, so the parameters after 3 updates agree."""
    one, two, (log_one, log_two) = _train_two_ways(data_dir, tmp_path, name)
    assert one["optimizer_history"][-1]["num_updates"] == two["optimizer_history"][-1]["num_updates"] == 3
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Adam would hide a constant error in the normalisation: the logged loss and
    # sample sizes of every update must agree too
    assert len(log_one) == len(log_two) == 3, (log_one, log_two)
    for (loss_a, wpb_a, bsz_a), (loss_b, wpb_b, bsz_b) in zip(log_one, log_two):
        assert (wpb_a, bsz_a) == (wpb_b, bsz_b)
        assert loss_a == pytest.approx(loss_b, abs=2e-3)


def test_gloo_ranks_train_the_inference_network_with_reinforce(data_dir, tmp_path):
    """Sampling draws differ between the layouts, so parameters are not compared;
    instead every parameter of q must carry Adam moments after DDP updates."""
    # the estimator from the first update (the automatic warm-up would train q by its KL alone)
    _, two, _ = _train_two_ways(data_dir, tmp_path, "elbo-reinforce", ["--latent-warmup", "off"])
    assert two["optimizer_history"][-1]["num_updates"] == 3
    assert all(torch.isfinite(v.float()).all() for v in two["model"].values())
    # the trainer's parameter order; q's embedding table is the decoder's (one parameter, two names);
    # the checkpoint markers (attention kind, output layer, Dirichlet link, dictionary checksums)
    # are integer buffers, not parameters; the automatic warm-up's state is a float buffer
    seen, names = set(), []
    for k, v in two["model"].items():
        if v.is_floating_point() and v.data_ptr() not in seen and k != "latent_warmup_state":
            seen.add(v.data_ptr())
            names.append(k)
    assert "inference_network.embed_tokens.weight" not in names
    state = two["last_optimizer_state"]["state"]
    assert sorted(state) == list(range(len(names)))
    q_index = [i for i, k in enumerate(names) if k.startswith("inference_network.")]
    assert q_index
    for i in q_index:
        assert state[i]["exp_avg"].abs().sum() > 0, f"{names[i]} got no gradient under DDP"
