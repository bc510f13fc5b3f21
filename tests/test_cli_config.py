"""The CLI is generated from the config dataclasses (one line per new field), kernel choices are
recorded config fields, a broken subcommand fails loudly, and every file is written atomically."""

import argparse
import dataclasses
import json
import os
import sys

import pytest

from flopscale import cli, fileio
from flopscale.engine.config import ConfigError, ModelConfig, TrainConfig, flag_name


def _train_parser():
    return next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]


def _flags(parser: argparse.ArgumentParser) -> dict:
    return {o: a.dest for a in parser._actions for o in a.option_strings if o.startswith("--")}


def test_train_flags_are_the_dataclass_fields_one_to_one():
    flags = _flags(_train_parser())
    fields = [f for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls) if f.name != "n_vocab"]
    for f in fields:
        assert flags.get(flag_name(f)) == f.name, f"no --flag for {f.name}"
        assert f.metadata.get("help"), f"{f.name} has no help text"
    extra = set(flags) - {flag_name(f) for f in fields}
    assert extra == {"--help", "--out", "--quiet"}, extra


def test_train_flag_defaults_are_the_dataclass_defaults():
    a = _train_parser().parse_args(["--n-layer", "1", "--d-model", "32", "--out", "x"])
    for f in dataclasses.fields(TrainConfig):
        assert getattr(a, f.name) == f.default, f.name
    assert a.n_ctx == 128 and a.n_heads is None  # the train command's own model defaults


def test_flops_command_keeps_the_paper_defaults():
    p = cli.build_parser()
    a = p.parse_args(["flops", "--n-layer", "12", "--d-model", "768"])
    cfg = cli._model_config(a, a.n_vocab)
    assert (cfg.n_ctx, cfg.n_vocab, cfg.n_heads, cfg.d_attn, cfg.d_ff) == (1024, 50257, 12, 768, 3072)


def test_kernel_fields_are_validated_and_map_to_backend_options():
    from flopscale.engine.config import kernel_fields
    from flopscale.kernels import BACKEND_OPTIONS

    with pytest.raises(ConfigError, match="cuda_attention must be one of"):
        TrainConfig(cuda_attention="ws")
    assert TrainConfig(backend="cuda").kernel_options() == {"attention": "auto", "ffn_backward": "split"}
    assert TrainConfig(backend="triton", triton_ffn_loads="pointer").kernel_options() == {"ffn_loads": "pointer"}
    assert TrainConfig().kernel_options() == {}
    declared = {f"{b}_{o}": vals for b, opts in BACKEND_OPTIONS.items() for o, vals in opts.items()}
    assert set(kernel_fields()) == set(declared)  # one field per option, one option per field
    for name in kernel_fields():
        assert TrainConfig.__dataclass_fields__[name].default == declared[name][0], name


def test_bad_choice_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--n-layer", "1", "--d-model", "32", "--dtype", "float8", "--out", "x"])
    assert e.value.code == 2
    assert "invalid choice: 'float8'" in capsys.readouterr().err


def test_broken_subcommand_import_fails_loudly(monkeypatch):
    import importlib

    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "flopscale.fitting.cli":
            raise ImportError("simulated breakage")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="simulated breakage"):
        cli.build_parser()


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    p = tmp_path / "f.json"
    fileio.atomic_write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(p, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary left behind
    with pytest.raises(ValueError):
        with fileio.atomic_write(p, "a"):
            pass


def test_run_dir_from_before_the_kernel_fields_resumes(tmp_path):
    """A config.json written before a TrainConfig field existed reads that field as its default."""
    from flopscale.engine.data import stdlib_sample
    from flopscale.engine.train import Trainer

    data = tmp_path / "data"
    stdlib_sample(data, n_files=4)
    mc = ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=16, n_vocab=300)
    tc = TrainConfig(data=str(data), tokenizer="bpe-300", batch_size=2, steps=4, eval_every=2, eval_batches=1)
    Trainer(mc, tc, tmp_path / "run", progress=False).run()
    cpath = tmp_path / "run" / "config.json"
    rec = json.loads(cpath.read_text())
    for k in ("cuda_attention", "cuda_ffn_backward", "triton_ffn_loads"):
        del rec["train"][k]
    cpath.write_text(json.dumps(rec))
    tc2 = dataclasses.replace(tc, steps=4)
    assert Trainer(mc, tc2, tmp_path / "run", progress=False).run() == {"step": 4, "complete": True}
    with pytest.raises(Exception, match="different configuration"):
        Trainer(mc, dataclasses.replace(tc, cuda_attention="mma_sync"), tmp_path / "run", progress=False).run()
