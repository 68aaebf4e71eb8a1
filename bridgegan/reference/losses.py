"""The BridgeGAN training objective (spec section 5), as plain functions and two modules.
The latent codes are the programs' (``programs``), their encoder and mapping terms
computed in batched calls.

``DiscriminatorObjective`` (holds D) and ``GeneratorObjective`` (holds G, E, M) compute a
whole loss in their ``forward`` so that each can be wrapped in DistributedDataParallel
and trained with one forward and one backward per step. They return
``(loss, terms)`` (the generator's ``(loss, terms, r)``, r the noise it used) where
``terms`` maps a name to a detached scalar tensor for logging.

Shapes: images (N, 3, S, S) in [-1, 1]; labels (N, A) 0/1; noise (N, noise_dim).
Every L1 / BCE term is a mean over all elements, as in the official code.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .loss_weights import LossWeights
from .programs import Stages, blend, label_code, reference_code

MODE_SEEKING_EPS = 1e-5
EDIT_THRESHOLD = 0.05  # a pixel the true edit changes: some channel moves more than this

# A function that averages a 1-D tensor of scalars over the processes of a distributed
# run (identity in one process).
Reduce = Callable[[torch.Tensor], torch.Tensor]
# refine(r0, target_code, d, mapping) -> refined noise (no gradient), see noise_memory.py.
Refine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


# ----- small pieces -------------------------------------------------------------------
def f32(t: torch.Tensor) -> torch.Tensor:
    """At least float32: half precision is upcast, float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over all elements (float32 accumulation)."""
    return (f32(a) - f32(b)).abs().mean()


def feature_match(features: Callable[[torch.Tensor], list[torch.Tensor]], images: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """Mean over the layers of ``features`` (a frozen network) of the L1 between the
    images' and the targets' activations, relative to the targets' mean magnitude so that
    every layer weighs alike."""
    with torch.no_grad():
        want = features(targets)
    got = features(images)
    return sum(l1(g, t) / f32(t).abs().mean().clamp_min(1e-6) for g, t in zip(got, want)) / len(got)


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy, mean over all elements."""
    return F.binary_cross_entropy_with_logits(f32(logits), f32(labels).to(f32(logits).dtype))


def cycle_sign(y_s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """o = (1 - |d|) * (1 - 2 y_s): +-1 on the unchanged attributes, 0 on the changed ones.

    +1 where the source lacks an unchanged attribute, -1 where it has it.
    """
    return (1 - d.abs()) * (1 - 2 * y_s)


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fakes: Sequence[torch.Tensor], eps: torch.Tensor,
                     scale: float = 1.0) -> torch.Tensor:
    """WGAN-GP: mean over the fakes of mean_i (||d critic / dx (x_hat_i)|| - 1)^2.

    x_hat = eps * real + (1 - eps) * fake with one eps per sample and fake
    (``eps`` has shape (len(fakes), N)). The fakes are detached. The interpolations and
    the penalty are float32 even under autocast; ``scale`` (a GradScaler's current scale
    for fp16) multiplies the critic output before the inner gradient, which is then
    divided by it again, so small gradients do not underflow in half precision.
    """
    k, n = len(fakes), real.shape[0]
    if eps.shape != (k, n):
        raise ValueError(f"eps must have shape ({k}, {n}), got {tuple(eps.shape)}")
    real = f32(real.detach())
    e = eps.to(real).view(k, n, 1, 1, 1)
    fake = torch.stack([f.detach().to(real.dtype) for f in fakes])
    x_hat = (e * real.unsqueeze(0) + (1 - e) * fake).flatten(0, 1).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(f32(out).sum() * scale, x_hat, create_graph=True)
    grad = f32(grad) / scale
    norm = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    return ((norm - 1) ** 2).mean()


def mode_seeking(r1: torch.Tensor, r: torch.Tensor, x1: torch.Tensor, x_l: torch.Tensor,
                 reduce: Reduce = _identity, eps: float = MODE_SEEKING_EPS) -> torch.Tensor:
    """mean|r1 - r| / (mean|stopgrad(x1) - x_l| + eps), gradient through ``x_l`` only.

    Written as value + coef * (den - stopgrad(den)) with coef = -num / (den + eps)^2, so
    that when the means are averaged over the processes of a distributed run by
    ``reduce`` (num and den of the GLOBAL batch), averaging the per-process gradients
    gives exactly the gradient of the global ratio. In one process this is the plain
    ratio (same value, same gradient).
    """
    num = l1(r1.detach(), r.detach())
    den = l1(x1.detach(), x_l)
    num_g, den_g = reduce(torch.stack([num.detach(), den.detach()])).unbind(0)
    value = num_g / (den_g + eps)
    coef = -num_g / (den_g + eps) ** 2
    return value + coef * (den - den.detach())


# ----- the two objectives -------------------------------------------------------------
class DiscriminatorObjective(nn.Module):
    """L_D = -(mean D(X_s) - mean over the 3 fakes of mean D(fake)) + w_gp GP
    + w_d_attr BCE(D_cls(X_s), y_s).

    With no fakes it is the attribute warm-up loss w_d_attr BCE(D_cls(X_s), y_s) alone (the
    adversarial head enters times zero so that DDP sees every parameter used).
    """

    def __init__(self, discriminator: nn.Module, weights: LossWeights):
        super().__init__()
        self.discriminator = discriminator
        self.weights = weights

    def forward(self, x: torch.Tensor, y: torch.Tensor, fakes: Sequence[torch.Tensor],
                gp_eps: torch.Tensor | None = None, gp_scale: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        n = x.shape[0]
        if not fakes:
            adv, cls = self.discriminator(x)
            attr = bce(cls, y)
            loss = w.d_attr * attr + 0.0 * f32(adv).sum()
            return loss, {"warmup/d_attr": attr.detach(),
                          "warmup/d_acc": ((cls > 0) == (y > 0.5)).float().mean().detach()}
        adv, cls = self.discriminator(torch.cat([x, *[f.detach().to(x.dtype) for f in fakes]]))
        adv = f32(adv)
        wd = adv[:n].mean() - adv[n:].mean()  # the fakes have equal sizes: mean of means
        attr = bce(cls[:n], y)
        gp = gradient_penalty(lambda t: self.discriminator(t)[0], x, fakes, gp_eps, gp_scale)
        loss = -wd + w.gp * gp + w.d_attr * attr
        terms = {"d/adv": -wd, "d/gp": gp, "d/attr": attr, "d/total": loss}
        return loss, {k: v.detach() for k, v in terms.items()}


def encode_targets(encoder: nn.Module, x: torch.Tensor, xr: torch.Tensor, d: torch.Tensor,
                   with_zero: bool = False) -> list[torch.Tensor]:
    """E(X_s, -d), E(X_r, d) [, E(X_s, 0), E(X_r, 0)] in one encoder call."""
    zero = torch.zeros_like(d)
    xs = [x, xr] + ([x, xr] if with_zero else [])
    ds = [-d, d] + ([zero, zero] if with_zero else [])
    return list(encoder(torch.cat(xs), torch.cat(ds)).chunk(len(xs)))


def make_fakes(generator: nn.Module, encoder: nn.Module, mapping: nn.Module,
               x: torch.Tensor, y: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor,
               noise: torch.Tensor, alpha: torch.Tensor, refine: Refine | None = None
               ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(X_l, X_ref, X_int) for the discriminator step, without gradients, and the noise r.

    ``noise`` is fresh noise, or the stored r0 of each reference when ``refine`` is given.
    """
    st = Stages(generator.trunk, encoder, mapping, generator.decode)
    d = yr - y
    with torch.no_grad():
        s_s, e_r = encode_targets(encoder, x, xr, d)
    r = refine(noise, e_r, d, mapping) if refine is not None else noise
    with torch.no_grad():
        s_rand = label_code(st, r, d, s_s)
        s_ref = reference_code(e_r, s_s)
        s_int = blend(alpha, s_rand, s_ref)
        h = generator.trunk(x)
        n = x.shape[0]
        out = generator.decode(h.repeat(3, 1, 1, 1), torch.cat([s_rand, s_ref, s_int]))
    return tuple(out.split(n)), r


class GeneratorObjective(nn.Module):
    """The generator loss of spec section 5 for G, E, M (D is passed in, frozen).

    forward returns (loss, terms, r): r is the noise actually used for X_l (the refined
    memory noise when ``refine`` is given), to be written back into the noise memory.

    ``x_true`` (optional, not in the paper): each source rendered with its target labels,
    for data that can render the true edit (the procedural faces). With ``weights.paired``
    or ``weights.paired_edit`` > 0 (either needs ``x_true``) the loss adds paired * mean
    over X_l, X_ref, X_int of L1(fake, x_true), and paired_edit * the mean over images of
    that L1 over only the pixels where x_true differs from X_s (by more than EDIT_THRESHOLD
    in some channel; images without such pixels left out): every edit counts alike, whatever
    its size, while small edits (a moustache, glasses) cover a few pixels and would
    otherwise hardly weigh. Under DDP that mean is per process. The critic is not run when
    the adversarial and attribute weights are 0.

    ``features`` (optional, not in the paper): a frozen attribute classifier's activations.
    With ``weights.feature`` > 0 the loss adds feature * ``feature_match`` of the three fakes
    to the true edits (when given) and of the two reconstructions to the source: the L1
    terms weigh a 2-pixel open mouth or a wrinkle as little as its area, while the
    classifier's features, trained to tell attributes apart, weigh them by what they show.
    The targets are real images, so matching them cannot be won by fooling the classifier.
    """

    def __init__(self, generator: nn.Module, encoder: nn.Module, mapping: nn.Module,
                 weights: LossWeights):
        super().__init__()
        self.generator = generator
        self.encoder = encoder
        self.mapping = mapping
        self.weights = weights

    def forward(self, x: torch.Tensor, y: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor,
                noise: torch.Tensor, r1: torch.Tensor, alpha: torch.Tensor,
                critic: nn.Module, refine: Refine | None = None,
                reduce: Reduce = _identity, x_true: torch.Tensor | None = None,
                features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        G, E, M, w = self.generator, self.encoder, self.mapping, self.weights
        n = x.shape[0]
        d = yr - y                                     # y_t = y_r: the reference's labels
        zero = torch.zeros_like(d)
        s_s, e_r, e_s0, e_r0 = encode_targets(E, x, xr, d, with_zero=True)
        r = refine(noise, e_r.detach(), d, M) if refine is not None else noise.detach()
        st = Stages(G.trunk, E, M, G.decode)
        # LEM, its reconstruction (d = 0) and the mode-seeking code (fresh r1): one M call
        s_rand, s_rec_l, s_1 = label_code(st, torch.cat([r, r, r1]), torch.cat([d, zero, d]),
                                          torch.cat([s_s, e_s0, s_s])).chunk(3)
        s_ref = reference_code(e_r, s_s)               # REM
        s_rec_r = reference_code(e_r0, e_s0)           # its reconstruction (d = 0)
        s_int = blend(alpha, s_rand, s_ref)
        h = G.trunk(x)
        out = G.decode(h.repeat(6, 1, 1, 1), torch.cat([s_rand, s_ref, s_int, s_rec_l, s_rec_r, s_1]))
        x_l, x_ref, x_int, x_rec_l, x_rec_r, x_1 = out.split(n)

        fakes = torch.cat([x_l, x_ref, x_int])
        if w.adv or w.attr:
            adv, cls = critic(fakes)
            loss_adv, loss_attr = -f32(adv).mean(), bce(cls, yr.repeat(3, 1))
        else:
            loss_adv = loss_attr = fakes.new_zeros((), dtype=torch.float32)
        loss_paired = loss_paired_edit = loss_adv.new_zeros(())
        if w.paired or w.paired_edit:
            if x_true is None:
                raise ValueError("the paired loss weights are > 0 but no x_true (true edits) "
                                 "was given")
            err = (f32(fakes) - f32(x_true).repeat(3, 1, 1, 1)).abs()
            loss_paired = err.mean()
            changed = (f32(x_true) - f32(x)).abs().amax(1, keepdim=True) > EDIT_THRESHOLD
            changed = changed.repeat(3, err.shape[1], 1, 1).flatten(1)
            count = changed.sum(1)
            per_image = (err.flatten(1) * changed).sum(1) / count.clamp_min(1)
            loss_paired_edit = per_image.sum() / (count > 0).sum().clamp_min(1)
        loss_rec = (l1(x, x_rec_l) + l1(x, x_rec_r)) / 2
        loss_feature = loss_adv.new_zeros(())
        if w.feature:
            if features is None:
                raise ValueError("the feature loss weight is > 0 but no features (a frozen "
                                 "classifier) were given")
            images, targets = torch.cat([x_rec_l, x_rec_r]), torch.cat([x, x])
            if x_true is not None:
                images, targets = torch.cat([fakes, images]), torch.cat([x_true.repeat(3, 1, 1, 1),
                                                                        targets])
            loss_feature = feature_match(features, images, targets)
        loss_latent = l1(s_rand, s_ref)
        o = cycle_sign(y, d)
        c_l, c_ref, c_l_o, c_s_o = E(
            torch.cat([x_l.detach(), x_ref.detach(), x_l, x]), torch.cat([d, d, o, o])
        ).chunk(4)
        # each fake, taken as a reference, gives back the code that made it
        loss_cycle = (l1(s_rand, reference_code(c_l, s_s)) + l1(s_ref, reference_code(c_ref, s_s))
                      + l1(c_l_o, c_s_o)) / 3
        loss_ms = mode_seeking(r1, r, x_1, x_l, reduce)
        loss = (w.adv * loss_adv + w.attr * loss_attr + w.rec * loss_rec
                + w.latent * loss_latent + w.cycle * loss_cycle + w.mode_seeking * loss_ms
                + w.paired * loss_paired + w.paired_edit * loss_paired_edit
                + w.feature * loss_feature)
        terms = {
            "g/adv": loss_adv, "g/attr": loss_attr, "g/rec": loss_rec, "g/paired": loss_paired,
            "g/paired_edit": loss_paired_edit, "g/feature": loss_feature,
            "g/latent": loss_latent, "g/cycle": loss_cycle, "g/mode_seeking": loss_ms,
            "g/total": loss, "noise/r_mean": f32(r).mean(),
            "noise/r_abs_mean": f32(r).abs().mean(),
        }
        return loss, {k: v.detach() for k, v in terms.items()}, r.detach()
