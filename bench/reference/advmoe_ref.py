"""A PyTorch reference of AdvMoE Lab's models and training steps, to measure the product against.

It builds the network a product checkpoint describes (`config.json` + `model.safetensors`,
written by `advmoe bench steps --out DIR`), checks that it computes what the product computed
on the same weights and batch (`DIR/parity.safetensors`), and only then times the same steps:
standard training, TRADES / vanilla MoE AT, AdvMoE, and a PGD-10 evaluation batch. It follows
the product's definitions (crates/advmoe-model, crates/advmoe-engine; DESIGN.md):

* inputs in [0, 1], normalised inside the model ((x - 0.5) / 0.25);
* ResNet: dense 3x3 stem + BN + ReLU; four stages of `depth` BasicBlocks of MoE 3x3 convs,
  widths `round(ratio * width * 2**stage)`, stride 2 at the first block of stages 1-3, a 1x1
  projection shortcut where stride or width change; global average pool; linear classifier;
* MoE conv: N experts of `w` filters, expert e owns rows e*w..(e+1)*w of the weight; hard top-1
  routing (ties to the lowest index); in training the router sees a detached copy of its input
  (per-layer routers) and gates with a straight-through gate (value 1, d gate/d score = 1 on
  the selected expert); in attacks routes are recomputed with a constant gate;
* batch norm with batch statistics in training (running statistics updated with momentum 0.1 and
  the unbiased batch variance, after the optimiser step), running statistics otherwise;
* TRADES: K signed-gradient steps on KL(f(x) || f(x')) from x + N(0, 0.001^2), eval-mode BN;
  AdvMoE adds the routers' KL to that objective, steps the experts on the TRADES loss, then on
  fresh examples the routers on TRADES + the load-balance term;
* SGD with momentum 0.9 (no dampening) and weight decay added to the gradient, as torch.optim.SGD.

Only `torch` is needed (`pip install torch`). Usage (bench/README.md):

    python3 bench/reference/advmoe_ref.py DIR [--threads N] [--reps 5] [--device cpu|cuda] [--tf32]
        [--moe-conv split|dense]

The MoE conv comes in two forms a PyTorch user might write: the batch split by expert, one
convolution per expert (`split`, the default: only the selected experts' arithmetic, but
`nonzero` makes the host wait for the GPU at every MoE conv), or every expert on every sample
in one convolution, each sample then keeping its own (`dense`: N times the arithmetic, no
waiting). Both compute the same and pass the same checks; `bench/compare.sh` times both on a GPU.
"""

import argparse
import json
import math
import resource
import struct
import sys
import time

import torch
import torch.nn.functional as F

MEAN, STD = 0.5, 0.25
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
TRADES_START_STD = 1e-3
# How the MoE conv runs (--moe-conv): "split" (the batch split by expert, one conv per expert)
# or "dense" (every expert on every sample, then each sample's own).
MOE_CONV = "split"


def read_safetensors(path):
    """Every tensor of a safetensors file (F32 and I64 only), and its metadata."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = {"F32": torch.float32, "I64": torch.int64}[info["dtype"]]
        t = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, header.get("__metadata__", {})


class Route:
    """One MoE layer's decision: scores [B, N], experts [B], gate [B, N] (one-hot in value)."""

    def __init__(self, scores, experts, gate):
        self.scores, self.experts, self.gate = scores, experts, gate


def gate_from_scores(scores):
    experts = scores.detach().argmax(1)
    one_hot = F.one_hot(experts, scores.shape[1]).to(scores.dtype)
    return Route(scores, experts, one_hot * (scores - scores.detach() + 1.0))


def hard_route(scores):
    experts = scores.detach().argmax(1)
    return Route(scores, experts, F.one_hot(experts, scores.shape[1]).to(scores.dtype))


class Net:
    """The product's MoeNet (ResNet backbone) over a dict of named tensors."""

    def __init__(self, spec, tensors, device):
        if spec["arch"] != "resnet":
            raise SystemExit(f"the reference implements the ResNet backbone, not {spec['arch']}")
        self.spec = spec
        self.n = spec["num_experts"]
        self.p = {}
        for name, t in tensors.items():
            t = t.to(device)
            if not name.endswith(("running_mean", "running_var")):
                t.requires_grad_(True)
            self.p[name] = t
        self.blocks = []
        in_planes, i = spec["width"], 0
        for stage in range(4):
            width = max(1, round(spec["ratio"] * (spec["width"] << stage)))
            for block in range(spec["depth"]):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = stride != 1 or in_planes != width
                self.blocks.append((f"resnet.blocks.{i}", stride, shortcut, width))
                in_planes, i = width, i + 1
        self.image_router = spec["router"] == "image" and self.n > 1
        names = set(tensors)
        expected = self.expected_names()
        if names != expected:
            raise SystemExit(f"checkpoint tensors differ from the spec: missing {sorted(expected - names)}, extra {sorted(names - expected)}")

    def expected_names(self):
        bn = lambda p: {f"{p}.{k}" for k in ("gamma", "beta", "running_mean", "running_var")}
        names = {"resnet.stem.weight", "classifier.weight", "classifier.bias"} | bn("resnet.stem_bn")
        for path, _, shortcut, _ in self.blocks:
            for c in ("conv1", "conv2"):
                names.add(f"{path}.{c}.weight")
                if self.n > 1 and not self.image_router:
                    names |= {f"{path}.{c}.router.fc.weight", f"{path}.{c}.router.fc.bias"}
            names |= bn(f"{path}.bn1") | bn(f"{path}.bn2")
            if shortcut:
                names |= {f"{path}.shortcut.conv.weight"} | bn(f"{path}.shortcut.bn")
        if self.image_router:
            for k in range(3):
                names |= {f"router.convs.{k}.weight"} | bn(f"router.bns.{k}")
            names |= {"router.fc.weight", "router.fc.bias"}
        return names

    def parameters(self, keep=lambda path: True):
        return [t for name, t in self.p.items() if t.requires_grad and keep(name)]

    def bn(self, path, x, train, stats):
        g, b = self.p[f"{path}.gamma"], self.p[f"{path}.beta"]
        if not train:
            return F.batch_norm(x, self.p[f"{path}.running_mean"], self.p[f"{path}.running_var"], g, b, False, 0.0, BN_EPS)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + BN_EPS)
        stats.append((path, mean.detach(), var.detach() * (n / (n - 1) if n > 1 else 1.0)))
        return y * g[None, :, None, None] + b[None, :, None, None]

    def conv(self, name, x, stride):
        w = self.p[name]
        return F.conv2d(x, w, None, stride, w.shape[2] // 2)

    def moe(self, path, x, stride, route, exact, routes):
        w = self.p[f"{path}.weight"]
        if self.n == 1:
            return F.conv2d(x, w, None, stride, w.shape[2] // 2)
        if route is None:
            pooled_in = x if exact else x.detach()
            scores = F.linear(pooled_in.mean((2, 3)), self.p[f"{path}.router.fc.weight"], self.p[f"{path}.router.fc.bias"])
            route = hard_route(scores) if exact else gate_from_scores(scores)
        routes.append(route)
        width = w.shape[0] // self.n
        if MOE_CONV == "dense":
            # Every expert runs in one convolution, then each sample keeps its own expert's
            # channels: N times the split's arithmetic, but one cuDNN call and no host
            # synchronisation (the split's `nonzero` waits for the GPU at every MoE conv).
            y = F.conv2d(x, w, None, stride, w.shape[2] // 2)
            y = y.view(y.shape[0], self.n, width, *y.shape[2:])
            rows = torch.arange(y.shape[0], device=y.device)
            gate = route.gate.gather(1, route.experts[:, None])
            return y[rows, route.experts] * gate[:, :, None, None]
        # Only the selected expert runs: the batch is split by expert, one conv per expert.
        out = None
        for e in range(self.n):
            idx = (route.experts == e).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            y = F.conv2d(x[idx], w[e * width : (e + 1) * width], None, stride, w.shape[2] // 2)
            y = y * route.gate[idx, e][:, None, None, None]
            if out is None:
                out = x.new_zeros((x.shape[0],) + y.shape[1:])
            out = out.index_copy(0, idx, y)
        return out

    def router_scores(self, x, train, stats):
        for k in range(3):
            x = F.relu(self.bn(f"router.bns.{k}", self.conv(f"router.convs.{k}.weight", x, 1 if k == 0 else 2), train, stats))
        return F.linear(x.mean((2, 3)), self.p["router.fc.weight"], self.p["router.fc.bias"])

    def forward(self, images, train, routing="free", fixed=None):
        """Logits, routes (one per MoE conv) and batch-norm statistics. routing: free / exact /
        fixed (then `fixed` is a list of expert tensors, one per MoE conv)."""
        stats, routes = [], []
        x = (images - MEAN) / STD
        exact = routing == "exact"
        image_route = None
        if self.image_router and routing != "fixed":
            scores = self.router_scores(x, train, stats)
            image_route = hard_route(scores) if exact else gate_from_scores(scores)
        moe_index = [0]

        def moe(path, x, stride):
            route = image_route
            if routing == "fixed" and self.n > 1:
                experts = fixed[moe_index[0]]
                moe_index[0] += 1
                g = F.one_hot(experts, self.n).to(x.dtype)
                route = Route(g, experts, g)
            return self.moe(path, x, stride, route, exact, routes)

        x = F.relu(self.bn("resnet.stem_bn", self.conv("resnet.stem.weight", x, 1), train, stats))
        for path, stride, shortcut, _ in self.blocks:
            identity = self.bn(f"{path}.shortcut.bn", self.conv(f"{path}.shortcut.conv.weight", x, stride), train, stats) if shortcut else x
            y = F.relu(self.bn(f"{path}.bn1", moe(f"{path}.conv1", x, stride), train, stats))
            y = self.bn(f"{path}.bn2", moe(f"{path}.conv2", y, 1), train, stats)
            x = F.relu(y + identity)
        logits = F.linear(x.mean((2, 3)), self.p["classifier.weight"], self.p["classifier.bias"])
        return logits, routes, stats

    def route_scores(self, images):
        """Every distinct decision's scores, eval-mode BN, differentiable in the images."""
        if self.image_router:
            return [self.router_scores((images - MEAN) / STD, False, [])]
        return [r.scores for r in self.forward(images, False, "exact")[1]]

    @torch.no_grad()
    def apply_bn(self, stats, keep=lambda path: True):
        for path, mean, var in stats:
            if keep(path):
                rm, rv = self.p[f"{path}.running_mean"], self.p[f"{path}.running_var"]
                rm.mul_(1 - BN_MOMENTUM).add_(mean * BN_MOMENTUM)
                rv.mul_(1 - BN_MOMENTUM).add_(var * BN_MOMENTUM)


def is_router_path(path):
    return path.startswith("router.") or ".router." in path


def cross_entropy(logits, labels):
    return -(F.log_softmax(logits, 1).gather(1, labels[:, None])).mean()


def kl_each_from_log(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(1)


def kl_div(p_logits, q_logits):
    return kl_each_from_log(F.log_softmax(p_logits, 1), F.log_softmax(q_logits, 1)).mean()


def load_balance(net, routes):
    distinct = routes[:1] if net.image_router else routes
    if not distinct:
        return None
    terms = []
    for r in distinct:
        fraction = r.gate.detach().mean(0)
        prob = F.softmax(r.scores, 1).mean(0)
        terms.append((fraction * prob).sum() * r.scores.shape[1])
    return torch.stack(terms).sum() / len(terms)


class Steps:
    """The product's training steps and evaluation attack on `net`, with its run config."""

    def __init__(self, net, config, generator):
        self.net, self.config, self.gen = net, config, generator
        train = config["train"]
        self.attack = train["attack"]
        self.beta = train["beta"]
        self.balance_weight = config.get("balance_weight", 0.0)
        sgd = lambda params: torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])
        self.main = sgd(net.parameters())
        self.experts = sgd(net.parameters(lambda p: not is_router_path(p)))
        self.routers = sgd(net.parameters(is_router_path)) if net.n > 1 else None

    def balance(self, routes):
        if self.balance_weight > 0 and self.net.n > 1:
            return load_balance(self.net, routes)
        return None

    def project(self, center, x, eps):
        return torch.minimum(torch.maximum(x, center - eps), center + eps).clamp(0.0, 1.0)

    def trades_examples(self, images, router_kl):
        net, eps, step = self.net, self.attack["eps"], self.attack["step_size"]
        with torch.no_grad():
            clean_lp = F.log_softmax(net.forward(images, False)[0], 1)
            clean_route_lp = [F.log_softmax(s, 1) for s in net.route_scores(images)] if router_kl and net.n > 1 else []
        noise = torch.randn(images.shape, generator=self.gen, device=images.device) * TRADES_START_STD
        x = self.project(images, images + noise, eps)
        for _ in range(self.attack["steps"]):
            x = x.detach().requires_grad_(True)
            value = kl_each_from_log(clean_lp, F.log_softmax(net.forward(x, False, "exact")[0], 1))
            for clp, s in zip(clean_route_lp, net.route_scores(x) if clean_route_lp else []):
                value = value + kl_each_from_log(clp, F.log_softmax(s, 1))
            (grad,) = torch.autograd.grad(value.sum(), x)
            x = self.project(images, x.detach() + step * grad.sign(), eps)
        return x.detach()

    def trades_loss(self, images, adv, labels, with_balance):
        clean, routes, stats = self.net.forward(images, True)
        perturbed, _, adv_stats = self.net.forward(adv, True)
        ce = cross_entropy(clean, labels)
        kl = kl_div(clean, perturbed)
        total = ce + self.beta * kl
        balance = self.balance(routes) if with_balance else None
        if balance is not None:
            total = total + self.balance_weight * balance
        return total, ce, kl, balance, stats + adv_stats

    def descend(self, optimizer, loss, stats, keep=lambda p: True):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.net.apply_bn(stats, keep)
        for t in self.net.parameters():
            t.grad = None

    def standard(self, images, labels):
        logits, routes, stats = self.net.forward(images, True)
        loss = cross_entropy(logits, labels)
        balance = self.balance(routes)
        if balance is not None:
            loss = loss + self.balance_weight * balance
        self.descend(self.main, loss, stats)
        return loss.detach()

    def trades(self, images, labels):
        adv = self.trades_examples(images, False)
        total, _, _, _, stats = self.trades_loss(images, adv, labels, True)
        self.descend(self.main, total, stats)
        return total.detach()

    def advmoe(self, images, labels):
        adv = self.trades_examples(images, True)
        total, _, _, _, stats = self.trades_loss(images, adv, labels, False)
        self.descend(self.experts, total, stats, lambda p: not is_router_path(p))
        adv = self.trades_examples(images, True)
        total, _, _, _, stats = self.trades_loss(images, adv, labels, True)
        self.descend(self.routers, total, stats, is_router_path)
        return total.detach()

    def pgd10_eval(self, images, labels):
        """PGD-10 at 8/255 (step 2/255, uniform start) on the cross-entropy, keeping each image's
        first successful iterate, then the accuracy on the result."""
        net, eps, step = self.net, 8 / 255, 2 / 255
        u = torch.rand(images.shape, generator=self.gen, device=images.device) * 2 - 1
        x = self.project(images, images + eps * u, eps)
        best = x.clone()
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(10):
            x = x.detach().requires_grad_(True)
            logits = net.forward(x, False, "exact")[0]
            loss = F.cross_entropy(logits, labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            wrong = logits.detach().argmax(1) != labels
            newly = wrong & ~done
            best[newly] = x.detach()[newly]
            done |= wrong
            x = self.project(images, x.detach() + step * grad.sign(), eps)
        with torch.no_grad():
            best[~done] = x[~done]
            return (net.forward(best, False)[0].argmax(1) == labels).float().mean()


def attack_lab(steps, images, labels):
    """The attack lab's PGD-10 at 8/255 on one image, from the clean image (no random start),
    then its clean and adversarial predictions and routes."""
    net, eps, step = steps.net, 8 / 255, 2 / 255
    image, label = images[:1], labels[:1]
    x = image.clone()
    for _ in range(10):
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(net.forward(x, False, "exact")[0], label, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        x = steps.project(image, x.detach() + step * grad.sign(), eps)
    with torch.no_grad():
        out = [net.forward(t, False) for t in (image, x)]
        return [(o[0].softmax(1).cpu(), [r.experts.cpu() for r in o[1]]) for o in out]


def compare(name, ours, theirs, tolerance, failures, report):
    ours, theirs = ours.detach().double().cpu(), theirs.double().cpu()
    scale = max(theirs.abs().max().item(), 1e-12)
    diff = (ours - theirs).abs().max().item() / scale
    report[name] = diff
    if not diff <= tolerance:
        failures.append(f"{name}: relative difference {diff:.2e} > {tolerance:.0e}")


def load(model_dir, device):
    """The network, run config and spec of a checkpoint folder."""
    config = json.load(open(f"{model_dir}/config.json"))
    tensors, meta = read_safetensors(f"{model_dir}/model.safetensors")
    spec = json.loads(meta["spec"])
    return Net(spec, tensors, device), config, spec


def parity(model_dir, device, step_tolerance):
    """Recompute what `advmoe bench steps` recorded in MODEL_DIR/parity.safetensors; returns the
    largest relative differences, or exits when one is beyond its tolerance."""
    record, _ = read_safetensors(f"{model_dir}/parity.safetensors")
    net, config, _ = load(model_dir, device)
    images = record["images"].to(device)
    labels = record["labels"].long().to(device)
    adv = record["adv_images"].to(device)
    failures, report = [], {}
    with torch.no_grad():
        logits, routes, _ = net.forward(images, False)
    compare("eval logits", logits, record["eval_logits"], 1e-4, failures, report)
    for k, r in enumerate(routes[: 1 if net.image_router else len(routes)]):
        compare(f"router scores {k}", r.scores, record[f"eval_scores.{k}"], 1e-4, failures, report)
        mismatched = (r.experts.cpu() != record[f"eval_routes.{k}"].long()).sum().item()
        if mismatched:
            failures.append(f"routes of decision {k}: {mismatched} images routed differently")
    steps = Steps(net, config, torch.Generator(device=device).manual_seed(0))
    total, ce, kl, balance, _ = steps.trades_loss(images, adv, labels, True)
    compare("train-mode cross-entropy", ce, record["trades_ce"], 1e-4, failures, report)
    compare("TRADES KL", kl, record["trades_kl"], 1e-3, failures, report)
    compare("TRADES loss with balance", total, record["trades_total"], 1e-4, failures, report)
    # Two plain SGD steps (standard training) at the recorded learning rate, then the logits.
    # Their tolerance is wider: a pre-activation within float rounding of a ReLU's kink takes
    # the other side in one implementation, and its gradient flips. Measured on the dense
    # ResNet-10 (batch 16): one of 262,144 pre-activations in block 0 (-9e-8 in float64,
    # positive in the product's float32) moved that block's gradients by up to 0.25% and the
    # logits after two steps by 4.2e-3. On an NVIDIA H200 (PyTorch 2.11, cuDNN's deterministic
    # fp32 algorithms) the dense ResNet-10 at width 32, batch 128, read 1.9e-2 while every
    # quantity of one pass agreed within 6e-5: `--step-tolerance` widens this check alone.
    for g in steps.main.param_groups:
        g["lr"] = record["lr"].item()
    for k in range(2):
        steps.standard(images, labels)
        with torch.no_grad():
            after = net.forward(images, False)[0]
        compare(f"eval logits after SGD step {k + 1}", after, record[f"logits_after_step.{k}"], step_tolerance, failures, report)
    if failures:
        raise SystemExit(f"{model_dir}: the reference does not compute what the product computes:\n  " + "\n  ".join(failures))
    return report


def timed(fn, reps, device):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return first, times[len(times) // 2]


def benchmark(directory, device, reps):
    """Time each step kind the product timed (DIR/product.json), from the same initial
    checkpoint, at the same batch size."""
    product = json.load(open(f"{directory}/product.json"))
    batch = product["batch"]
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for row in product["rows"]:
        kind = row["kind"]
        net, config, spec = load(f"{directory}/{row['model']}", device)
        images = torch.rand((batch, spec["in_channels"], *spec["image_size"]), generator=gen, device=device)
        labels = torch.randint(0, spec["num_classes"], (batch,), generator=gen, device=device)
        steps = Steps(net, config, gen)
        fn = {
            "standard": lambda: steps.standard(images, labels),
            "trades": lambda: steps.trades(images, labels),
            "moe-at": lambda: steps.trades(images, labels),
            "advmoe": lambda: steps.advmoe(images, labels),
            "pgd10-eval": lambda: steps.pgd10_eval(images, labels),
            "attack-lab": lambda: attack_lab(steps, images, labels),
        }[kind]
        first, median = timed(fn, reps, device)
        n = 1 if kind == "attack-lab" else batch
        rows.append({"kind": kind, "first_ms": first * 1e3, "median_ms": median * 1e3, "images_per_s": n / median})
        print(f"{kind:<11} {median * 1e3:9.1f} ms/step ({n / median:7.1f} img/s; first {first * 1e3:.1f} ms)", file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rows, peak


def report(directory):
    """The side-by-side table of DIR/product.json and DIR/reference*.json, printed and written to
    DIR/compare.json: per step kind the median milliseconds of each side, and the ratio of
    images per second, product / PyTorch (above 1: the product is faster)."""
    product = json.load(open(f"{directory}/product.json"))
    references = []
    for name, tag in (("reference.json", "fp32"), ("reference-tf32.json", "tf32"), ("reference-dense.json", "dense")):
        try:
            references.append((tag, json.load(open(f"{directory}/{name}"))))
        except FileNotFoundError:
            pass
    if not references:
        raise SystemExit(f"no reference.json in {directory}")
    rows = []
    for p in product["rows"]:
        row = {"kind": p["kind"], "product_ms": p["median_ms"], "product_first_ms": p["first_ms"], "product_img_s": p["images_per_s"]}
        for tag, ref in references:
            r = next((r for r in ref["rows"] if r["kind"] == p["kind"]), None)
            if r:
                row[f"reference_{tag}_ms"] = r["median_ms"]
                row[f"reference_{tag}_first_ms"] = r["first_ms"]
                row[f"ratio_{tag}"] = p["images_per_s"] / r["images_per_s"]
        rows.append(row)
    ref = references[0][1]
    out = {
        "product": {k: product[k] for k in ("device", "threads", "batch", "model", "peak_rss_mib")},
        "reference": {k: ref[k] for k in ("torch", "device", "threads", "peak_rss_mib", "parity")},
        "rows": rows,
        "peak_rss_ratio": (product["peak_rss_mib"] / ref["peak_rss_mib"]) if product.get("peak_rss_mib") else None,
    }
    json.dump(out, open(f"{directory}/compare.json", "w"), indent=1)
    nan = float("nan")
    print(f"Product on {product['device']}, {product['threads']} threads; PyTorch {ref['torch']} on {ref['device']}, "
          f"{ref['threads']} threads; batch {product['batch']} (attack-lab: one image)")
    head = "| step | product ms | " + " | ".join(f"PyTorch {t} ms | ratio {t}" for t, _ in references) + " | first call ms, product / PyTorch |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        cells = " | ".join(f"{r.get(f'reference_{t}_ms', nan):.1f} | {r.get(f'ratio_{t}', nan):.2f}" for t, _ in references)
        print(f"| {r['kind']} | {r['product_ms']:.1f} | {cells} | {r['product_first_ms']:.0f} / {r.get('reference_fp32_first_ms', nan):.0f} |")
    if out["peak_rss_ratio"]:
        print(f"Peak resident memory: product {product['peak_rss_mib']:.0f} MiB, PyTorch {ref['peak_rss_mib']:.0f} MiB (ratio {out['peak_rss_ratio']:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", help="the folder `advmoe bench steps --out` wrote")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (GPU)")
    parser.add_argument("--moe-conv", default="split", choices=["split", "dense"],
                        help="the MoE conv: split the batch by expert, or every expert on every sample")
    parser.add_argument("--step-tolerance", type=float, default=1e-2,
                        help="relative tolerance of the logits after two SGD steps (the parity check's widest)")
    parser.add_argument("--report", action="store_true", help="print the side-by-side table of DIR's results")
    args = parser.parse_args()
    if args.report:
        report(args.dir)
        return
    torch.set_num_threads(args.threads)
    global MOE_CONV
    MOE_CONV = args.moe_conv
    # The parity check runs in plain fp32 with cuDNN's deterministic algorithms (no TF32, no
    # Winograd or FFT picked by its benchmark mode), whatever the timing below uses.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    product = json.load(open(f"{args.dir}/product.json"))
    checked = {}
    for model in dict.fromkeys(r["model"] for r in product["rows"]):
        checked[model] = parity(f"{args.dir}/{model}", args.device, args.step_tolerance)
        worst = max(checked[model].values())
        print(f"{model}: the reference computes what the product computes (largest relative difference {worst:.1e})", file=sys.stderr)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    rows, peak = benchmark(args.dir, args.device, args.reps)
    out = {
        "torch": torch.__version__,
        "device": "cpu" if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": args.threads,
        "tf32": args.tf32,
        "moe_conv": args.moe_conv,
        "parity": checked,
        "rows": rows,
        "peak_rss_mib": peak,
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
