"""Images/s of one full training step: forward, loss, backward, grad clip 10, optimizer step, EMA update.

    python benchmarks/train_step.py                       # S and L, CPU, batch 2, 640 px
    python benchmarks/train_step.py --device cuda --batch 16 --amp bf16 --variants s l

Each step starts from the batch a DataLoader hands over (uint8 images in pinned host memory on GPU,
targets on the host, 80 class names per image) and does what the trainer does per batch.
worldtune: the body of `worldtune.engine.train.train_one_epoch` (schedule, upload and float
conversion, the per-image text embeddings from the frozen, cached CLIP tower, forward, official
criterion, backward, clip 10, the one host sync for logging and the NaN check, optimizer, EMA).
When `ultralytics` is importable, its YOLO-World-v2 model (`yolov8{s,l}-worldv2.yaml`, random
weights) runs on the same batch in the same run with what its `WorldTrainer` does per batch:
`preprocess_batch` (upload, float conversion, text embeddings stacked from its per-name dictionary),
its loss, the running mean of the loss items, backward, `optimizer_step` (unscale, clip 10, AdamW,
ModelEMA) and the progress-bar line that prints the loss items (a host sync). Both take an optimizer
step every batch, the step being compared; Ultralytics' trainer by default accumulates gradients to
a nominal batch of 64 and steps every round(64 / batch) batches (`--ultralytics-nbs 64` times that;
use at least that many steps per round, or its optimizer step never falls inside the timing). It is an AGPL
benchmark-only reference that worldtune never imports. Both use the same 512-d embedding per name
(from a randomly initialised CLIP tower: the numbers do not matter, their shapes and traffic do).
"""
import argparse
import platform
import statistics
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from worldtune.engine.ema import ExpMomentumEMA, ema_momentum
from worldtune.engine.optim import OptimConfig, build_optimizer
from worldtune.engine.schedule import ScheduleConfig, apply_schedule
from worldtune.engine.train import cpu_has_native_bf16
from worldtune.loss.assigner import pad_targets
from worldtune.loss.criterion import YOLOWorldCriterion
from worldtune.model import build_model


def make_batch(batch: int, imgsz: int, num_texts: int = 80, objects: int = 8, seed: int = 0) -> dict:
    """Host batch as the loader delivers it: random uint8 images, 8 random boxes per image, and per
    image the `num_texts` class names in a random order (as RandomLoadText shuffles them)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, imgsz, imgsz), generator=g, dtype=torch.uint8)
    rows = []
    for i in range(batch):
        xy = torch.rand(objects, 2, generator=g) * imgsz * 0.7
        wh = 16 + torch.rand(objects, 2, generator=g) * imgsz * 0.3
        labels = torch.randint(0, num_texts, (objects, 1), generator=g).float()
        rows.append(torch.cat([torch.full((objects, 1), float(i)), labels, xy, (xy + wh).clamp(max=imgsz - 1)], 1))
    names = [f"object class {k}" for k in range(num_texts)]
    texts = [[names[k] for k in torch.randperm(num_texts, generator=g).tolist()] for _ in range(batch)]
    return {"images": images, "bboxes_labels": torch.cat(rows), "texts": texts, "names": names}


def host_batch(data: dict, device) -> dict:
    """`data` with its images in pinned memory on GPU (both trainers' loaders pin)."""
    return dict(data, images=data["images"].pin_memory() if device.type == "cuda" else data["images"])


class FixedEmbeddings:
    """Stand-in for the text tower where `transformers` is missing: one fixed random vector per name."""

    def __init__(self, device, dim: int = 512):
        self.device, self.dim, self.table = device, dim, {}

    def encode(self, texts: list, per_string: bool = False) -> torch.Tensor:
        for text in texts:
            if text not in self.table:
                self.table[text] = torch.nn.functional.normalize(torch.randn(self.dim), dim=0).to(self.device)
        return torch.stack([self.table[t] for t in texts])


def text_tower(device):
    """worldtune's frozen CLIP text tower (ViT-B/32 shape, random weights), with its embedding cache."""
    try:
        from worldtune.model.loading import build_text_model

        return build_text_model("random").to(device).eval()
    except ImportError as e:
        print(f"text tower unavailable ({e}): fixed random embeddings per name instead")
        return FixedEmbeddings(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device, amp):
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def time_steps(step, steps: int, device, warmup: int = 1) -> float:
    """Seconds per step over `steps` steps, after `warmup` untimed ones (allocations, cuDNN autotune)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def rounds_img_s(steps: dict, batch: int, args, device) -> dict:
    """Median images/s of each step function over `args.rounds` rounds, the implementations taking
    turns within each round, so clock ramps and neighbours' load hit both alike."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(batch / time_steps(step, args.steps, device, warmup=0))
    for name, label in (("ours", "worldtune"), ("cpu_amp", "worldtune cpu_amp")):
        if name in rates and "theirs" in rates and args.rounds > 1:  # the same round's pair: a slow spell hits both
            ratios = sorted(o / t for o, t in zip(rates[name], rates["theirs"]))
            print(f"  {label} / ultralytics per round: {', '.join(f'{r:.3f}' for r in ratios)} "
                  f"(faster in {sum(r > 1 for r in ratios)} of {len(ratios)} rounds)", flush=True)
    return {name: statistics.median(r) for name, r in rates.items()}


def worldtune_step(variant: str, data: dict, device, amp: str, tower, official_groups: bool = False,
                   channels_last: bool = True, compile_mode: str | None = None, cpu_amp: bool = False):
    from worldtune.engine.text_feats import batch_text_feats
    from worldtune.engine.train import amp_settings

    model = build_model(variant).to(device).train()
    memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)  # train.channels_last (GPU only), as the training loop does
    batch = data["images"].shape[0]
    # train.merge_param_groups (default true): a few groups, same updates as one group per parameter
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=batch), merge_groups=not official_groups)
    ema = ExpMomentumEMA(model)
    criterion = YOLOWorldCriterion()
    amp_on, amp_dtype = amp_settings(amp, device, cpu_amp)  # the loop's choice (train.amp, train.cpu_amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)
    host = host_batch(data, device)
    targets = host["bboxes_labels"]  # host side, as in the loop: the criterion pads them without a sync
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    counter = [0]

    def step():
        if compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        apply_schedule(optimizer, 0, counter[0], 1000, ScheduleConfig())
        x = host["images"].to(device, non_blocking=True).to(torch.float32, memory_format=memory_format)
        x.div_(255)
        text = batch_text_feats(tower, host["texts"], device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_on else nullcontext():
            out = forward(x, text)
        losses = criterion([c.float() for c in out.cls_logits], [r.float() for r in out.box_dist_logits], targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 10.0)
        logged = torch.stack(list(losses.values())).tolist()  # the loop's one host sync (logging, NaN check)
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        counter[0] += 1
        return logged
    step.model, step.ema = model, ema  # for the tests that compare it with the graphed step
    return step


def graphed_worldtune_step(variant: str, data: dict, device, amp: str, tower, slots: int = 32):
    """EXPERIMENT, not a loop option: worldtune's whole step (forward, loss, backward, clip, AdamW,
    EMA) replayed from one CUDA graph, so the CPU launches one graph instead of ~2,000 kernels.

    What that needs and this does: fixed shapes (targets padded to `slots` gts per image), AdamW
    fused + capturable with a tensor lr per group (the schedule writes into those tensors), the EMA
    weight as a tensor, autocast without its weight cache, warm-up steps on a side stream before the
    capture. On CPU the same body runs eagerly (a smoke test of the logic, nothing is captured).
    """
    model = build_model(variant).to(device).train()
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=memory_format)
    batch = data["images"].shape[0]
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=batch), merge_groups=True)
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        group["capturable"] = device.type == "cuda"
    shadow = SimpleNamespace(param_groups=[{k: v for k, v in g.items() if k != "params"}
                                           for g in optimizer.param_groups])
    ema = ExpMomentumEMA(model)
    ema_avgs, ema_news = ema.lerp_tensors(model)
    ema_weight = torch.zeros((), device=device)
    criterion = YOLOWorldCriterion()
    from worldtune.engine.text_feats import batch_text_feats

    images, text = data["images"].to(device), batch_text_feats(tower, data["texts"], device)  # static inputs
    gts = [t.to(device) for t in pad_targets(data["bboxes_labels"], batch, text.shape[1], min_slots=slots)]
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def body() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype is not None,
                            cache_enabled=False):
            out = model(images.to(torch.float32, memory_format=memory_format) / 255, text)
        losses = criterion.call_padded([c.float() for c in out.cls_logits], [r.float() for r in out.box_dist_logits],
                                       *gts)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        diffs = torch._foreach_sub(ema_news, ema_avgs)
        torch._foreach_mul_(diffs, ema_weight)
        torch._foreach_add_(ema_avgs, diffs)
        return torch.stack(list(losses.values()))

    counter = [0]

    def set_step_scalars():
        apply_schedule(shadow, 0, counter[0], 1000, ScheduleConfig())
        for group, values in zip(optimizer.param_groups, shadow.param_groups):
            group["lr"].fill_(values["lr"])
        # the loop's first EMA update is a plain copy: a lerp with weight 1 (floating tensors; the
        # integer BatchNorm counters, which evaluation does not read, stay as they were)
        ema_weight.fill_(1.0 if ema.steps == 0 else ema_momentum(ema.steps, ema.momentum, ema.gamma))
        ema.steps += 1
        counter[0] += 1

    if device.type != "cuda":
        def eager_step():
            set_step_scalars()
            optimizer.zero_grad(set_to_none=True)
            return body().tolist()
        eager_step.model, eager_step.ema = model, ema
        return eager_step

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # real steps: optimizer state, cuDNN autotuning, allocator warm-up
            set_step_scalars()
            optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the graph allocates the gradients once, in its pool
    with torch.cuda.graph(graph):
        static_losses = body()

    def graphed_step():
        set_step_scalars()
        graph.replay()
        return static_losses.tolist()  # the loop's one host sync (logging, NaN check)
    graphed_step.model, graphed_step.ema = model, ema
    return graphed_step


def ultralytics_step(variant: str, data: dict, device, amp: str, tower, nbs: int = 0):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils.torch_utils import ModelEMA

    model = WorldModel(f"yolov8{variant}-worldv2.yaml", nc=80, verbose=False).to(device).train()
    model.args = get_cfg()  # box 7.5, cls 0.5, dfl 1.5 as in worldtune's criterion
    host = host_batch(data, device)
    imgsz = host["images"].shape[-1]
    t = host["bboxes_labels"]
    xyxy = t[:, 2:6] / imgsz
    loaded = {"img": host["images"], "batch_idx": t[:, 0], "cls": t[:, 1:2],
              "bboxes": torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1),
              "texts": host["texts"]}
    # its trainer's name -> embedding dictionary, on the device (the same vectors worldtune uses)
    with torch.no_grad():
        embeddings = dict(zip(host["names"], tower.encode(host["names"], per_string=True).to(device)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
    ema = ModelEMA(model)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == "fp16")
    state = {"tloss": None, "i": 0}
    # nbs = 0: an optimizer step per batch, the step this benchmark compares. Its trainer's default
    # nbs = 64 accumulates gradients over round(64 / batch) batches per optimizer step, clip and EMA
    # (4 at batch 16, 32 at batch 2).
    accumulate = max(round(nbs / host["images"].shape[0]), 1) if nbs else 1

    def step():
        with _autocast(device, amp):
            # WorldTrainer.preprocess_batch: tensors to the device, images to float, text embeddings
            batch = {k: v.to(device, non_blocking=device.type == "cuda") if isinstance(v, torch.Tensor) else v
                     for k, v in loaded.items()}
            batch["img"] = batch["img"].float() / 255
            names = [name for image_names in batch["texts"] for name in image_names]
            feats = torch.stack([embeddings[name] for name in names]).to(device, non_blocking=device.type == "cuda")
            batch["txt_feats"] = feats.reshape(len(batch["texts"]), -1, feats.shape[-1])
            loss, items = model.loss(batch)
            loss = loss.sum()
            items = items if isinstance(items, dict) else {"items": items}
            i, tloss = state["i"], state["tloss"]
            state["tloss"] = items if tloss is None else {k: (tloss[k] * i + v) / (i + 1) for k, v in items.items()}
        scaler.scale(loss).backward()
        if (state["i"] + 1) % accumulate == 0:  # optimizer_step
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(model)
        # the progress bar formats the running loss items every step: a device -> host copy
        " ".join(f"{float(v):.4g}" for value in state["tloss"].values() for v in value.reshape(-1))
        state["i"] += 1
    return step


def print_profile(step, device, steps: int = 3) -> None:
    """Top operators of a few steps, by device time on GPU, by CPU time on CPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["s", "l"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=1, help="rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each implementation first")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="GPU only")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--no-channels-last", action="store_true", help="worldtune in NCHW (train.channels_last=false)")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="leave cuDNN autotuning off (the loop turns it on for GPU runs; it applies to both)")
    p.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="torch.compile worldtune's model with this mode (an experiment, not a loop option)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time the experimental whole-step CUDA graph of worldtune (graphed_worldtune_step)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of worldtune's step")
    p.add_argument("--ultralytics-nbs", type=int, default=0,
                   help="Ultralytics' nominal batch: 64 (its trainer's default) steps its optimizer every "
                        "round(64 / batch) batches; 0 (default): every batch, like worldtune")
    p.add_argument("--cpu-amp", action="store_true",
                   help="also time worldtune with train.cpu_amp (bf16 autocast on a CPU with native bf16; "
                        "Ultralytics' trainer has no CPU AMP and stays fp32)")
    p.add_argument("--official-groups", action="store_true",
                   help="also time worldtune with the official one-param-group-per-parameter optimizer")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as worldtune's training loop does on CPU; applies to both
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
          f"{args.batch}, {args.imgsz} px, {args.rounds} x {args.steps} timed steps after {args.warmup} warm-up, "
          f"amp {args.amp if device.type == 'cuda' else 'off'}")
    try:
        import ultralytics
        ul_version = ultralytics.__version__
    except ImportError:
        ul_version = None
    if args.cpu_amp and device.type == "cpu" and not cpu_has_native_bf16():
        print("note: this CPU has no native bf16, so train.cpu_amp leaves the step in fp32")
    extra = (" worldtune, CUDA graph (experiment) img/s |" if args.cuda_graph else "") + \
        (" worldtune, official groups img/s |" if args.official_groups else "") + \
        (" worldtune, train.cpu_amp (bf16) img/s |" if args.cpu_amp else "")
    print(f"| variant | worldtune img/s | ultralytics {ul_version or '(not installed)'} img/s |{extra}")
    print("|---|---|---|" + "---|" * extra.count("img/s"))
    data = make_batch(args.batch, args.imgsz)
    tower = text_tower(device)
    for variant in args.variants:
        steps = {"ours": worldtune_step(variant, data, device, args.amp, tower,
                                        channels_last=not args.no_channels_last, compile_mode=args.compile)}
        if ul_version:
            steps["theirs"] = ultralytics_step(variant, data, device, args.amp, tower, args.ultralytics_nbs)
        if args.cuda_graph:
            steps["graph"] = graphed_worldtune_step(variant, data, device, args.amp, tower)
        if args.official_groups:
            steps["official"] = worldtune_step(variant, data, device, args.amp, tower, official_groups=True,
                                               channels_last=not args.no_channels_last)
        if args.cpu_amp:
            steps["cpu_amp"] = worldtune_step(variant, data, device, "bf16", tower, cpu_amp=True)
        rates = rounds_img_s(steps, args.batch, args, device)
        row = f"| {variant} | {rates['ours']:.3g} | {rates['theirs']:.3g} |" if ul_version else \
            f"| {variant} | {rates['ours']:.3g} | - |"
        if args.cuda_graph:
            row += f" {rates['graph']:.3g} |"
        if args.official_groups:
            row += f" {rates['official']:.3g} |"
        if args.cpu_amp:
            row += f" {rates['cpu_amp']:.3g} |"
        print(row, flush=True)
        if args.profile:
            print_profile(steps["ours"], device)
        del steps
        if device.type == "cuda":
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
