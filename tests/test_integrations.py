"""Integrations with the trainers people use, end to end on tiny models."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rlrs import presets  # noqa: E402
from rlrs.integrations.hf import RelativeLRTrainer  # noqa: E402

STEPS = 6


class Windows(torch.utils.data.Dataset):
    def __init__(self, n=64, seq=16, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=False))


def _trainer(out, **kw):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1,
        save_strategy="steps", save_steps=3, report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0, weight_decay=0.5, lr_scheduler_type="linear", warmup_steps=2)
    return RelativeLRTrainer(plan="paper-dense", model=_llama(), args=args, train_dataset=Windows(), **kw)


def test_hf_trainer_follows_the_plan_logs_every_component_and_resumes_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.train()
    plan = full.plan
    assert plan.base_lr == 3e-3 and plan.embedding == presets.get("paper-dense").embedding  # η_base from the args
    groups = full.optimizer.param_groups
    assert {c for g in groups for c in g["components"]} >= {"embedding", "unembedding", "attention", "feedforward"}
    assert all(g["weight_decay"] in (0.0, plan.weight_decay_of(g["components"][0])) for g in groups)  # the plan's, not 0.5
    logged = [e for e in full.state.log_history if "lr/attention" in e]
    assert [e["step"] for e in logged] == list(range(1, STEPS + 1))
    for e in logged:  # the LR each optimizer step used: Plan.lr at step - 1, not the linear warmup asked for
        for comp in ("embedding", "attention", "feedforward", "unembedding"):
            assert e[f"lr/{comp}"] == pytest.approx(plan.lr(comp, e["step"] - 1, STEPS), rel=1e-12)

    resumed = _trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


def test_hf_trainer_refuses_an_optimizer_of_its_own(tmp_path):
    from rlrs.config import ConfigError

    opt = torch.optim.SGD(_llama().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="builds the optimizer and scheduler from the plan"):
        _trainer(tmp_path, optimizers=(opt, None))


def test_peft_lora_adapters_take_their_modules_component_and_lora_plus_speeds_up_b(tmp_path):
    peft = pytest.importorskip("peft")
    import dataclasses

    import rlrs

    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    plan = dataclasses.replace(presets.get("paper-dense"), lora_plus=16.0)
    groups = rlrs.param_groups(model, plan)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}  # base frozen: out
    comp = rlrs.classify(model)
    assert comp["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == "attention"
    assert comp["base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"] == "feedforward"
    opt = torch.optim.AdamW(groups)
    sched = rlrs.RelativeLR(opt, plan, 10)
    x = Windows().x[:2]
    for step in range(3):
        by = {(g["components"][0], g.get("lora_b", False)): g["lr"] for g in opt.param_groups}
        for c in ("attention", "feedforward"):
            assert by[(c, True)] == pytest.approx(16.0 * by[(c, False)]) and by[(c, False)] == plan.lr(c, step, 10)
        model(input_ids=x, labels=x).loss.backward()
        opt.step(); opt.zero_grad(); sched.step()  # noqa: E702
    assert all(g.get("lora_b") for g in opt.param_groups if "lora_B" in g["component"])


def test_the_readme_integration_examples_run_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    pytest.importorskip("peft")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    hf, lora = re.findall(r"### Hugging Face Trainer.*?```python\n(.*?)```.*?### PEFT.*?```python\n(.*?)```", readme, re.S)[0]
    monkeypatch.chdir(tmp_path)  # the example writes runs/hf
    scope: dict = {}
    exec(compile(hf, "README: Hugging Face Trainer", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["trainer"].state.global_step == 20
    exec(compile("import torch\ntotal_steps = 10\n" + lora, "README: PEFT", "exec"), scope)  # noqa: S102
    assert any(g.get("lora_b") for g in scope["opt"].param_groups)
    lightning = re.search(r"### PyTorch Lightning.*?```python\n(.*?)```", readme, re.S).group(1)
    pytest.importorskip("lightning")
    exec(compile(lightning, "README: Lightning", "exec"), scope)  # noqa: S102 - on the LoRA model above
    assert (tmp_path / "lightning_logs").is_dir()


# --- distributed wrappers -------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp2_fully_shard_two_processes_follow_the_plan(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "fsdp_train.py"
    out = tmp_path / "fsdp.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["same_names"] and report["sharded"]  # FSDP2 keeps the names; the params are DTensors
    comps = {c for g in report["groups"] for c in g["components"]}
    assert {"embedding", "unembedding", "attention", "router", "experts"} <= comps
    for g in report["groups"]:  # after 3 steps every group holds Plan.lr at step 3
        assert g["lr"] == report["expected"][g["components"][0]]


def test_ddp_and_compile_wrappers_keep_every_component():
    import socket

    import torch.distributed as dist

    import rlrs
    from rlrs.models import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=1)
    plain = rlrs.classify(build_model(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(build_model(cfg))
        assert rlrs.classify(ddp) == {f"module.{n}": c for n, c in plain.items()}
        groups = rlrs.param_groups(ddp, "paper-moe")
        assert sum(len(g["params"]) for g in groups) == len(list(ddp.parameters()))
    finally:
        dist.destroy_process_group()
    compiled = torch.compile(build_model(cfg))  # not run: wrapping is enough to prefix the names
    assert rlrs.classify(compiled) == {f"_orig_mod.{n}": c for n, c in plain.items()}


# --- PyTorch Lightning ----------------------------------------------------------------------------


def _lightning_fit(root, ckpt_path=None):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from rlrs.integrations.lightning import RelativeLRMonitor, configure_optimizers

    class LitLM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _llama()

        def training_step(self, batch, _):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return configure_optimizers(self, "paper-dense", lr=3e-3, betas=(0.9, 0.95))

    L.seed_everything(0, verbose=False)
    lit = LitLM()
    # Every batch the same: where Lightning restarts a plain DataLoader on resume (it replays the
    # epoch's batches) then does not matter, and the test sees only what rlrs restores.
    same = Windows(n=1)
    data = torch.utils.data.DataLoader([same[0]] * 12, batch_size=4, shuffle=False)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=CSVLogger(str(root)),
                        callbacks=[RelativeLRMonitor(), ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=3,
                                                                        save_top_k=-1)],
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                        log_every_n_steps=1)
    trainer.fit(lit, data, ckpt_path=ckpt_path)
    return lit, trainer


def test_lightning_follows_the_plan_logs_every_component_and_resumes_exactly(tmp_path):
    import csv

    full, trainer = _lightning_fit(tmp_path / "full")
    sched = trainer.lr_scheduler_configs[0].scheduler
    plan = sched.plan
    assert plan.base_lr == 3e-3 and sched.total_steps == STEPS and trainer.lr_scheduler_configs[0].interval == "step"
    rows = list(csv.DictReader(open(next((tmp_path / "full").rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("lr/attention")]
    assert len(logged) == STEPS
    for r in logged:
        step = int(r["step"])  # Lightning's step after the optimizer step; the LR used was Plan.lr at step
        assert float(r["lr/attention"]) == pytest.approx(plan.lr("attention", step, STEPS), rel=1e-6)
    ckpt = next((tmp_path / "full" / "ckpt").glob("*step=3*.ckpt"))
    resumed, _ = _lightning_fit(tmp_path / "resumed", ckpt_path=str(ckpt))
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


# --- TensorBoard from rlrs's own trainer ----------------------------------------------------------


def _events(directory):
    """Every (tag, step, value) in the TensorBoard event files under ``directory`` (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_rlrs_train_writes_every_metric_to_tensorboard_too(tmp_path, tiny_sets):
    pytest.importorskip("tensorboardX")
    from rlrs.train import Trainer, read_metrics, run_config

    cfg = run_config("tiny-moe", "paper-moe", sets={**tiny_sets, "train.steps": 6, "train.tensorboard": True})
    Trainer(cfg, tmp_path / "run").run()
    events = _events(tmp_path / "run" / "tensorboard")
    by = {(tag, step): v for tag, step, v in events}
    for rec in read_metrics(tmp_path / "run"):
        if rec["kind"] == "train":
            assert by[("train/loss", rec["step"])] == pytest.approx(rec["loss"], rel=1e-6)
            assert by[("train/lr/router", rec["step"])] == pytest.approx(rec["lr/router"], rel=1e-6)
        if rec["kind"] == "eval":
            assert by[("eval/eval_loss", rec["step"])] == pytest.approx(rec["eval_loss"], rel=1e-6)


def _wandb_history(run_dir):
    """(step, {key: value}) of every history record in a W&B offline run file (LevelDB-log framing:
    32 KiB blocks of records with a 7-byte header, a 7-byte file header first)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.rglob("run-*.wandb")).read_bytes()
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = pb.Record.FromString(pending)
            if rec.HasField("history"):
                out.append((rec.history.step.num, {it.key or "/".join(it.nested_key): json.loads(it.value_json)
                                                   for it in rec.history.item}))
    return out


def test_rlrs_train_logs_every_metric_to_wandb_offline(tmp_path, tiny_sets, monkeypatch):
    pytest.importorskip("wandb")
    from rlrs.train import Trainer, read_metrics, run_config

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is rlrs's default
    cfg = run_config("tiny-moe", "paper-moe", sets={**tiny_sets, "train.steps": 6, "train.wandb": True})
    Trainer(cfg, tmp_path / "run").run()
    history = {}
    for step, items in _wandb_history(tmp_path / "run" / "wandb"):
        history.setdefault(step, {}).update(items)
    for rec in read_metrics(tmp_path / "run"):
        if rec["kind"] == "train":
            assert history[rec["step"]]["train/loss"] == pytest.approx(rec["loss"], rel=1e-9)
            assert history[rec["step"]]["train/lr/router"] == pytest.approx(rec["lr/router"], rel=1e-9)
        if rec["kind"] == "eval":
            assert history[rec["step"]]["eval/eval_loss"] == pytest.approx(rec["eval_loss"], rel=1e-9)
