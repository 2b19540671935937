"""Layer and neuron workloads: neuron IG for 16 neurons, layer IG, Grad-CAM (see workloads.py).

Same model, inputs and conventions as `workloads.build`: contenders are zero-argument callables,
everything that is not the attribution call (transforms, Captum objects, expanded floor inputs,
cotangents, the model cut into the part up to the layer and the part after it) is built before
timing. Floors (see /work/shared/benchmarks.md) are plain torch on the model cut by hand at the
layer:

- neuron IG, K neurons: one forward of the n-step expanded batch up to the layer plus K
  backward passes. Candidates: the three plain-torch spellings of `workloads.many_floors` with
  K one-hot cotangents on the layer's whole output, and a loop of K `autograd.grad` calls on the
  K neurons gathered from the flattened output first; the fastest counts.
- layer IG: the layer activation of the input and of the baseline (one forward of 2B rows up to
  the layer, no graph) plus one forward+backward of the n-step expanded path points through the
  part of the model after the layer.
- Grad-CAM: one forward + one backward to the layer (the part up to the layer without a graph,
  the rest with one); a forward-hook spelling is a second candidate.
"""

from __future__ import annotations

import torch
from torch import nn

import xattr

from .workloads import N_CLASSES, SEED, Workload, _one_hot, exact, fwd_bwd, make_model, many_floors


def _cut(model_name: str, model: nn.Module):
    """The layers of each workload and the model cut by hand around them (for the floors).

    Returns {role: (module, up_to(x) -> activation, after(h) -> logits)} for the roles "neuron",
    "layer" (a middle conv layer) and "cam" (the last conv layer).
    """
    if model_name == "cnn":
        m = model

        def up_to_conv2(x):
            return m.conv2(m.pool(m.relu1(m.conv1(x))))

        def up_to_conv3(x):
            return m.conv3(m.pool(m.relu2(up_to_conv2(x))))

        def after_conv3(h):
            return m.fc(m.relu3(h).mean((2, 3)))

        def after_conv2(h):
            return after_conv3(m.conv3(m.pool(m.relu2(h))))

        return {"neuron": (m.conv2, up_to_conv2, after_conv2), "layer": (m.conv2, up_to_conv2, after_conv2),
                "cam": (m.conv3, up_to_conv3, after_conv3)}
    if model_name == "resnet50":
        m = model

        def stem(x):
            return m.maxpool(m.relu(m.bn1(m.conv1(x))))

        def up_to_layer3(x):
            return m.layer3(m.layer2(m.layer1(stem(x))))

        def up_to_layer4(x):
            return m.layer4(up_to_layer3(x))

        def after_layer4(h):
            return m.fc(torch.flatten(m.avgpool(h), 1))

        def after_layer3(h):
            return after_layer4(m.layer4(h))

        return {"neuron": (m.layer3, up_to_layer3, after_layer3), "layer": (m.layer3, up_to_layer3, after_layer3),
                "cam": (m.layer4, up_to_layer4, after_layer4)}
    raise ValueError(f"unknown model {model_name!r}")


def _neurons(shape: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    """k distinct (channel, row, column) indices into one example's activation, seeded."""
    g = torch.Generator().manual_seed(SEED + 1)
    flat = torch.randperm(int(torch.tensor(shape).prod()), generator=g)[:k]
    return [tuple(int(i) for i in torch.unravel_index(f, shape)) for f in flat]


def _strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major strides of a contiguous tensor of this shape (flat index = index . strides)."""
    return [int(torch.tensor(shape[d + 1:], dtype=torch.long).prod()) for d in range(len(shape))]


def _alphas(n_steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alphas, weights = xattr.quadrature("gausslegendre", n_steps)
    return (torch.as_tensor(alphas, dtype=like.dtype, device=like.device),
            torch.as_tensor(weights, dtype=like.dtype, device=like.device))


def build(model_name: str, device: str, *, neuron_steps: int = 20, n_neurons: int = 16, n_steps: int = 50) -> list[Workload]:
    """Neuron IG for n_neurons neurons, layer IG at a middle conv layer, Grad-CAM at the last one.

    Neuron IG runs at ``neuron_steps=20`` (the all-classes workload's step count), not 50: at 50
    it alone took 245 s of the CPU suite (Captum's loop of 16 and the vmapped floor candidate
    dominate), which leaves too little of the 10-minute budget on a loaded 2-core machine.
    """
    from captum.attr import LayerGradCam, LayerIntegratedGradients, NeuronIntegratedGradients  # noqa: PLC0415

    model, shape, batch = make_model(model_name, device)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn((batch,) + shape, generator=gen).to(device)  # the inputs of workloads.build
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    cut = _cut(model_name, model)
    f = xattr.target(model, y)
    work = []

    # Neuron IG for K neurons of a conv layer: one xattr call vs Captum's loop over the neurons.
    layer, to_neuron, _ = cut["neuron"]
    with torch.no_grad():
        act_shape = tuple(to_neuron(x[:1]).shape[1:])
    neurons = _neurons(act_shape, n_neurons)
    nig_x = xattr.integrated_gradients(xattr.neuron(xattr.at_layer(model, layer), xattr.outputs(neurons)), n_steps=neuron_steps)
    nig_c = NeuronIntegratedGradients(model, layer)

    def nig_captum():
        return torch.stack([nig_c.attribute(x, neuron_selector=i, n_steps=neuron_steps) for i in neurons], 1)

    a, _ = _alphas(neuron_steps, x)
    x_path = (a.reshape((-1,) + (1,) * x.ndim) * x).reshape((-1,) + shape)
    cots = torch.zeros((n_neurons, x_path.shape[0]) + act_shape, device=device)  # K one-hot cotangents
    for k, i in enumerate(neurons):
        cots[(k, slice(None)) + i] = 1.0
    strides = _strides(act_shape)
    flat = torch.tensor([sum(j * st for j, st in zip(i, strides)) for i in neurons], device=device)
    picked_cots = torch.eye(n_neurons, device=device)[:, None, :].expand(-1, x_path.shape[0], -1).contiguous()

    def picked(z):  # the K neurons gathered from the flattened activation: (R, K)
        return to_neuron(z).flatten(1)[:, flat]

    floors = many_floors(to_neuron, x_path, cots)
    floors["K neurons gathered, autograd.grad loop"] = many_floors(picked, x_path, picked_cots)["autograd.grad loop"]
    lname = "conv2" if model_name == "cnn" else "layer3"
    work.append(Workload(
        f"NeuronIntegratedGradients, {n_neurons} neurons of {lname}, n_steps={neuron_steps}", "many",
        lambda: nig_x(x), nig_captum, floors,
        lambda: exact(nig_x(x), nig_captum()), "exact, tol 1e-5",
        notes=[f"NeuronIntegratedGradients: neurons (channel, row, column) of {lname}'s output "
               f"{act_shape}: {neurons}; xattr: integrated_gradients(neuron(at_layer(model, {lname}), "
               f"outputs([...])), n_steps={neuron_steps}); Captum: NeuronIntegratedGradients(model, {lname}) "
               f"in a Python loop over the {n_neurons} neurons."],
    ))

    # Layer IG at a middle conv layer: the layer's activation is attributed; zero input baseline.
    layer, to_layer, after_layer = cut["layer"]
    split = xattr.at_layer(f, layer)
    lig = xattr.layer_integrated_gradients(split, n_steps=n_steps)

    def lig_x():
        return lig(x)

    lig_c = LayerIntegratedGradients(model, layer)

    def lig_captum():
        return lig_c.attribute(x, target=y, n_steps=n_steps)

    a, w = _alphas(n_steps, x)
    with torch.no_grad():
        h_x, h_0 = to_layer(x), to_layer(torch.zeros_like(x))
    h_path = (h_0 + a.reshape((-1,) + (1,) * h_x.ndim) * (h_x - h_0)).reshape((-1,) + tuple(h_x.shape[1:]))
    both = torch.cat([x, torch.zeros_like(x)])
    path_fb = fwd_bwd(after_layer, h_path, _one_hot(y, n_steps, n_out).to(device) * w.repeat_interleave(batch)[:, None])

    def lig_floor():
        with torch.no_grad():
            to_layer(both)  # the layer activation of input and baseline
        return path_fb()

    path_cot = _one_hot(y, n_steps, n_out).to(device) * w.repeat_interleave(batch)[:, None]

    def lig_plain():
        """Layer IG in plain torch, written for this one case: the layer's values at x and the
        baseline, the path built, one fwd+bwd after the layer, the weighted sum over the steps."""
        with torch.no_grad():
            h = to_layer(both)
        hx, h0 = h[:batch], h[batch:]
        delta = hx - h0
        path = (h0 + a.reshape((-1,) + (1,) * hx.ndim) * delta).reshape((-1,) + tuple(hx.shape[1:])).requires_grad_()
        (g,) = torch.autograd.grad(after_layer(path), path, path_cot)
        return g.reshape((n_steps,) + tuple(hx.shape)).sum(0) * delta

    work.append(Workload(
        f"LayerIntegratedGradients at {lname}, n_steps={n_steps}", "gradient", lig_x, lig_captum,
        {"act(x, baseline) + fwd+bwd after the layer": lig_floor},
        lambda: exact(lig_x(), lig_captum()), "exact, tol 1e-5",
        notes=[f"LayerIntegratedGradients: xattr: layer_integrated_gradients(at_layer(target(model, y), {lname}), "
               f"n_steps={n_steps}); Captum: LayerIntegratedGradients(model, {lname})"
               f".attribute(x, target=y, n_steps={n_steps}); 'plain-torch LayerIntegratedGradients' (for reference): "
               "the method hand-written for this model (the layer's values at x and 0, the path built, one fwd+bwd "
               "after the layer, the weighted sum over the steps): the floor leaves out building the path and the "
               "sum, which any implementation pays."],
        info={"fwd+bwd after the layer alone": path_fb, "plain-torch LayerIntegratedGradients": lig_plain},
    ))

    # Grad-CAM at the last conv layer.
    cam_layer, to_cam, after_cam = cut["cam"]
    cname = "conv3" if model_name == "cnn" else "layer4"
    split = xattr.at_layer(f, cam_layer)
    cam = xattr.grad_cam(split)  # relu=True by default: the paper's Grad-CAM

    def cam_x():
        return cam(x)

    cam_c = LayerGradCam(model, cam_layer)

    def cam_captum():
        return cam_c.attribute(x, target=y, relu_attributions=True)

    cot = _one_hot(y, 1, n_out).to(device)

    def cam_floor():
        with torch.no_grad():
            h = to_cam(x)
        h.requires_grad_()
        return torch.autograd.grad(after_cam(h), h, cot)[0]

    def hooked_grad():  # one fwd+bwd with a forward hook making the layer's output the leaf
        got = []

        def hook(module, inp, out):
            got.append(out.detach().requires_grad_())
            return got[-1]

        handle = cam_layer.register_forward_hook(hook)
        try:
            out = model(x)
        finally:
            handle.remove()
        return got[0], torch.autograd.grad(out, got[0], cot)[0]

    def cam_floor_hook():
        return hooked_grad()[1]

    def cam_plain():  # the whole method in plain torch: hook, one fwd+bwd, channel weights, sum, relu
        h, g = hooked_grad()
        return torch.relu((g.mean(tuple(range(2, g.ndim)), keepdim=True) * h.detach()).sum(1, keepdim=True))

    def cam_agree():
        a, b = cam_x(), cam_captum().detach()
        return exact(a.reshape(b.shape), b)

    work.append(Workload(
        f"LayerGradCam at {cname}", "gradient", cam_x, cam_captum,
        {"cut model": cam_floor, "forward hook": cam_floor_hook},
        cam_agree, "exact, tol 1e-5",
        info={"plain-torch Grad-CAM (forward hook)": cam_plain},
        notes=[f"LayerGradCam: xattr: grad_cam(at_layer(target(model, y), {cname})) (relu=True, its default); "
               f"Captum: LayerGradCam(model, {cname}).attribute(x, target=y, relu_attributions=True)."],
    ))
    return work
