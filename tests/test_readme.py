"""The README's training and generation commands work as written (on the test slice of the corpus)."""

import os
import re
import shlex
import subprocess

import pytest
from helpers import PYTHON, REPO, cli_env

README = os.path.join(REPO, "README.md")


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def bash_block(after_heading):
    """The first ```bash block after a heading."""
    text = readme()
    start = text.index(after_heading)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def common_options():
    return shlex.split(re.search(r'COMMON="(.*?)"', bash_block("## Train"), re.S).group(1))


def variant_rows():
    """{variant: fairseq-train options} from the README's table ("same with ..." rows reuse the one above)."""
    text = readme()
    table = text[text.index("| variant | options |") :].split("\n\n")[0]
    rows, previous = {}, None
    for line in table.splitlines()[2:]:
        name, cell = [c.strip() for c in line.strip("|").split("|")]
        options = re.findall(r"`([^`]*)`", cell)
        if cell.startswith("same with"):
            flag = options[0].split()[0]
            base = [o for o in shlex.split(previous)]
            i = base.index(flag)
            rows[name] = base[:i] + shlex.split(options[0]) + base[i + 2 :]
        else:
            rows[name] = shlex.split(options[0])
            previous = options[0]
    return rows


def test_the_variant_table_covers_every_criterion():
    rows = variant_rows()
    criteria = {o[o.index("--criterion") + 1] for o in rows.values()}
    assert criteria == {
        "cross_entropy",
        "varattn_marginal",
        "varattn_hard",
        "varattn_elbo",
        "varattn_dirichlet",
        "varattn_rws",
    }
    assert rows["variational, Gumbel-softmax"][-3:] == ["--estimator", "gumbel", "--skip-exact-nll-in-training"]


@pytest.mark.parametrize("name", list(variant_rows()))
def test_every_variant_row_parses_with_the_common_options(tmp_path, name):
    from fairseq import options

    for lang in ("de", "en"):
        (tmp_path / f"dict.{lang}.txt").write_text("")
    argv = [str(tmp_path), *common_options(), *variant_rows()[name]]
    argv[argv.index("--user-dir") + 1] = os.path.join(REPO, "fairseq_varattn")
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    assert args.arch == "varattn_lstm" and args.max_epoch == 50 and args.patience == 3
    assert args.required_batch_size_multiple == 1


def test_train_and_translate_blocks_run_as_written(data_dir, tmp_path):
    """The "Train" block (two updates instead of 50 epochs) and the fairseq-generate
    line of "Translate", run by bash from a folder holding the package as the repo does."""
    os.symlink(os.path.join(REPO, "fairseq_varattn"), tmp_path / "fairseq_varattn")
    train = bash_block("## Train").replace("DATA=runs/multi30k/bin", f"DATA={shlex.quote(data_dir)}")
    generate = [line for line in bash_block("## Translate").split("\n\n")[0].splitlines()][:2]
    # the commands themselves, bounded: fairseq's options may repeat, the last one wins
    script = "\n".join(
        [
            f'fairseq-train() {{ {shlex.quote(PYTHON)} -m fairseq_cli.train "$@" --max-update 2 --num-workers 0; }}',
            f'fairseq-generate() {{ {shlex.quote(PYTHON)} -m fairseq_cli.generate "$@" --max-sentences 20; }}',
            "set -e",
            train,
            *generate,
        ]
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert os.path.isfile(tmp_path / "ckpt" / "elbo-enum" / "checkpoint_best.pt")
    out = proc.stdout + proc.stderr
    assert "varattn_elbo" in out and re.search(r"^A-\d+\t", proc.stdout, re.M)
    assert re.search(r"Generate test with beam=5: BLEU = ", out)
