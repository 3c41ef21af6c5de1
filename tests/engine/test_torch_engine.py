"""The execution engine: its forward is the fast path, also under DistributedDataParallel; inference never
flips the module's train/eval flag on the fast path; bf16 weights with fp32 masters train as autocast does
and save full precision."""

import threading

import numpy as np
import pytest
import torch

from finetune_bert.training import checkpoint, steps
from finetune_bert.engine import fastpath
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.torch_engine import Engine, EngineOptions
from finetune_bert.engine.model_folder import load_classifier, load_tokenizer
from finetune_bert.data.tokens import encode

TEXTS = ["good film", "the plot was long and the music was dull and the ending was bad", "loved it",
         "a very short story with a wonderful actor and great light", "awful", "superb scene at night"]
LABELS = [0, 1, 0, 1, 1, 0]
CPU = torch.device("cpu")


def _setup(model_dir, *, training=True, options=EngineOptions(), dtype="auto", dropout=None, device=CPU):
    tok = load_tokenizer(str(model_dir))
    torch.manual_seed(0)
    model = load_classifier(str(model_dir), ["a", "b"])
    if dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    engine = Engine(model, device, tok.pad_token_id, options=options, training=training, dtype=dtype)
    return engine, encode(tok, TEXTS, LABELS, 64, "head+tail")


def _spy_fast_path(monkeypatch) -> list[int]:
    calls = []
    real = fastpath._padded_layer

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(fastpath, "_padded_layer", counting)
    return calls


def _grads(engine) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in engine.model.named_parameters() if p.grad is not None}


def test_ddp_wrapped_engine_runs_the_fast_path_and_gives_the_same_gradients(tiny_model, tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    engine, enc = _setup(tiny_model)
    share = steps.Share(np.arange(len(TEXTS)), 1 / len(TEXTS))
    # two micro-batches: DDP syncs once, at the last
    steps._forward_backward(engine, enc, share, 2, steps.StepOptions(), 1)
    plain = _grads(engine)
    engine.model.zero_grad(set_to_none=True)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(engine)
        ddp_forward = []
        monkeypatch.setattr(wrapped, "_pre_forward", lambda *a, **k: ddp_forward.append(1) or
                            DistributedDataParallel._pre_forward(wrapped, *a, **k))
        calls = _spy_fast_path(monkeypatch)
        done = steps._forward_backward(wrapped, enc, share, 2, steps.StepOptions(), 1)
        assert done.last is not None  # under DDP the exchanging backward waits for the vote
        done.last.backward()
    finally:
        dist.destroy_process_group()
    assert ddp_forward and calls, "DDP's forward and the fast path both ran"
    wrapped_grads = _grads(engine)
    assert plain.keys() == wrapped_grads.keys()
    for name, g in plain.items():
        assert torch.allclose(wrapped_grads[name], g, atol=1e-6), name


def test_inference_leaves_a_training_engine_in_training_mode(tiny_model, monkeypatch):
    engine, enc = _setup(tiny_model, dropout=0.5)
    calls = _spy_fast_path(monkeypatch)
    logits = engine.logits(enc, 4)
    assert calls and engine.training and all(m.training for m in engine.modules())
    with torch.no_grad():
        stock = _stock_eval_logits(engine, enc)
    assert torch.allclose(logits, stock, atol=1e-5)  # no dropout, although every module is in training mode
    assert torch.equal(logits, engine.logits(enc, 4))


def _stock_eval_logits(engine, enc) -> torch.Tensor:
    model = engine.model.eval()
    try:
        batch = engine.layout.batch(enc, np.arange(len(enc)))
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train()


def test_stock_forward_inference_is_in_eval_mode_and_restores_training(tiny_model):
    engine, enc = _setup(tiny_model, options=EngineOptions(cls_fast_path=False), dropout=0.5)
    assert not engine.fast_path
    logits = engine.logits(enc, 4)
    assert engine.training and all(m.training for m in engine.modules())
    with torch.no_grad():
        assert torch.allclose(logits, _stock_eval_logits(engine, enc), atol=1e-5)


def test_concurrent_inference_gives_each_caller_its_own_results(tiny_model):
    engine, enc = _setup(tiny_model, training=False)
    expected = engine.logits(enc, 2)
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(engine.logits(enc, 2))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(torch.allclose(r, expected, atol=1e-6) for r in results)


def test_results_come_back_in_input_order(tiny_model):
    engine, enc = _setup(tiny_model, training=False)
    together = engine.logits(enc, 2)
    for i in range(len(TEXTS)):
        one = encode(load_tokenizer(str(tiny_model)), [TEXTS[i]], None, 64, "head+tail")
        assert torch.allclose(engine.logits(one, 1)[0], together[i], atol=1e-5)


def _train_losses(engine, enc, n_steps=6) -> list[float]:
    params = engine.trainable()
    optimizer = torch.optim.AdamW(params, lr=3e-3, foreach=True)
    state, losses = TrainState(), []
    for step in range(n_steps):
        loss, finite = steps.train_step(engine, optimizer, enc, np.arange(len(TEXTS)), state)
        state.step += 1
        assert bool(finite)
        losses.append(float(loss))
    return losses


def test_bf16_weights_with_fp32_masters_train_as_autocast_does(tiny_model):
    masters, enc = _setup(tiny_model, dtype=torch.bfloat16)
    autocast, _ = _setup(tiny_model, dtype=torch.bfloat16, options=EngineOptions(bf16_weights=False))
    assert masters.bf16_weights and masters.masters is not None and not autocast.bf16_weights
    assert all(p.dtype == torch.bfloat16 for p in masters.model.parameters())
    assert all(m.dtype == torch.float32 for m in masters.trainable())
    a, b = _train_losses(masters, enc), _train_losses(autocast, enc)
    assert a[-1] < a[0]  # it learns
    assert all(abs(x - y) / abs(y) < 1e-2 for x, y in zip(a, b)), (a, b)
    # the bf16 weights are the masters rounded, and what is saved is the masters themselves
    weights = masters.weights()
    for name, p in masters.model.named_parameters():
        assert weights[name].dtype == torch.float32
        assert torch.equal(weights[name].to(torch.bfloat16), p.detach())


def test_checkpoint_of_bf16_weights_keeps_the_fp32_masters_exactly(tiny_model, tmp_path):
    engine, enc = _setup(tiny_model, dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(engine.trainable(), lr=1e-2, foreach=True)
    state = TrainState()
    steps.train_step(engine, optimizer, enc, np.arange(len(TEXTS)), state)
    state.step = 1
    path = checkpoint.save(tmp_path, engine, optimizer, state, 1)
    fresh, _ = _setup(tiny_model, dtype=torch.bfloat16)
    checkpoint.load(path, fresh, torch.optim.AdamW(fresh.trainable(), lr=1e-2, foreach=True))
    assert all(torch.equal(a, b) for a, b in zip(engine.masters, fresh.masters))
    assert all(torch.equal(a, b) for a, b in zip(engine.model.parameters(), fresh.model.parameters()))


def test_a_saved_bf16_weights_model_loads_in_fp32_with_the_masters(tiny_model, tmp_path):
    from finetune_bert.training.run_folder import RunFolder

    engine, enc = _setup(tiny_model, dtype=torch.bfloat16)
    _train_losses(engine, enc, 2)
    with RunFolder(str(tmp_path / "out"), overwrite=False) as run:
        run.save_model(engine.model, load_tokenizer(str(tiny_model)), {}, engine.weights())
    loaded = load_classifier(str(tmp_path / "out"))
    assert loaded.dtype == torch.float32
    saved = dict(loaded.named_parameters())
    for name, master in zip(engine._names, engine.masters):
        assert torch.equal(saved[name].detach(), master), name


@pytest.mark.parametrize("fast", [True, False])
def test_engine_forward_equals_stock_logits_in_eval(tiny_model, fast):
    engine, enc = _setup(tiny_model, training=False, options=EngineOptions(cls_fast_path=fast))
    batch = engine.layout.batch(enc, np.arange(len(enc)))
    with torch.no_grad():
        assert torch.allclose(engine(batch), _stock_eval_logits(engine, enc), atol=1e-5)
        assert not engine.training


@pytest.mark.parametrize("fast", [True, False])
def test_engine_scores_text_pairs_as_the_stock_model_with_token_type_ids(tiny_model, fast):
    """Pairs through the engine's inference (sorted batches, results in input order): the stock model's
    logits given input_ids, attention_mask and token_type_ids, row by row."""
    tok = load_tokenizer(str(tiny_model))
    engine, _ = _setup(tiny_model, training=False, options=EngineOptions(cls_fast_path=fast))
    with torch.no_grad():
        engine.model.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))  # logits ~1
    enc = encode(tok, TEXTS, LABELS, 64, "head+tail", pairs=TEXTS[::-1])
    logits = engine.logits(enc, 4)
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(TEXTS, TEXTS[::-1])):
            one = tok(a, b, return_tensors="pt")
            stock = engine.model(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                                 token_type_ids=one["token_type_ids"]).logits[0]
            assert torch.allclose(logits[i], stock, atol=1e-5), i


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on the device machine)")
def test_cuda_default_is_bf16_weights_on_packed_batches_and_trains_as_autocast_does(tiny_model):
    cuda = torch.device("cuda")
    masters, enc = _setup(tiny_model, device=cuda)
    autocast, _ = _setup(tiny_model, device=cuda, options=EngineOptions(bf16_weights=False))
    assert masters.bf16_weights and masters.layout.packed and masters.dtype == torch.bfloat16
    assert not autocast.bf16_weights and autocast.layout.packed
    a, b = _train_losses(masters, enc), _train_losses(autocast, enc)
    assert a[-1] < a[0]
    assert all(abs(x - y) / abs(y) < 2e-2 for x, y in zip(a, b)), (a, b)


def test_another_architecture_trains_and_predicts_through_the_stock_forward(tiny_model, toy_data, tmp_path):
    """A DistilBERT classifier: not the fast path's class, so the engine runs its own forward, in training
    (dropout from the module's flag) and in inference (eval mode for the duration, flag restored)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from finetune_bert import load, train
    folder = tmp_path / "distil"
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64,
                              dropout=0.1, attention_dropout=0.1)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    result = train(data=str(toy_data["train"]), model=str(folder), output=str(tmp_path / "out"), epochs=4,
                   batch_size=8, lr=5e-3, max_length=32, seed=0, num_threads=1)
    clf = load(result.output, backend="torch-fp32")  # exact: compared with the stock forward at 1e-5
    assert not clf.engine.fast_path and not clf.engine.training
    texts = ["the film was good and wonderful", "awful boring plot"]
    probs = clf.predict_proba(texts)
    with torch.no_grad():
        enc = clf.tokenizer(texts, padding=True, return_tensors="pt")
        stock = torch.softmax(clf.model(**enc).logits, -1).numpy()
    assert np.allclose(probs, stock, atol=1e-5) and result.metrics["validation"]["accuracy"] >= 0.5


def test_inference_runs_bf16_on_a_cpu_with_amx_and_fp32_elsewhere(monkeypatch, trained):
    """bf16 only where the CPU multiplies it fast (AMX); FINETUNE_BERT_CPU_BF16=0 or --backend torch-fp32 keep
    fp32; labels equal fp32's on the toy test set either way."""
    from finetune_bert import load
    from finetune_bert.engine.torch_engine import inference_dtype
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert inference_dtype(cpu) == torch.bfloat16
    monkeypatch.setenv("FINETUNE_BERT_CPU_BF16", "0")
    assert inference_dtype(cpu) is None
    monkeypatch.delenv("FINETUNE_BERT_CPU_BF16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert inference_dtype(cpu) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    fast, exact = load(trained.output, device="cpu"), load(trained.output, device="cpu", backend="torch-fp32")
    assert fast.engine.dtype == torch.bfloat16 and fast.engine.layout.multiple == 32 and exact.engine.dtype is None
    texts = ["a good and wonderful film", "awful dull plot", "superb music", "hated it"]
    assert (fast.predict_proba(texts).argmax(1) == exact.predict_proba(texts).argmax(1)).all()
