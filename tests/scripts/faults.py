"""Models with a fault planted in them, for the signals tests (model.factory = "faults:...")."""

from torch import nn


class DeepSigmoid(nn.Module):
    """Twelve sigmoid layers: the gradient vanishes long before it reaches the first ones."""

    def __init__(self, n_inputs, n_outputs, depth=12, width=32):
        super().__init__()
        layers, d = [], n_inputs
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.Sigmoid()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, n_outputs)

    def forward(self, x):
        return self.out(self.body(x.flatten(1)))


def deep_sigmoid(info):
    return DeepSigmoid(info.input_shape[0], info.n_outputs)


class SpikeAt(nn.Module):
    """A small MLP whose outputs are blown up 100 times at one training step (the 150th)."""

    def __init__(self, n_inputs, n_outputs, at=150):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_inputs, 64), nn.ReLU(), nn.Linear(64, n_outputs))
        self.calls, self.at = 0, at

    def forward(self, x):
        out = self.net(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * 100
        return out


def spike_at_150(info):
    return SpikeAt(info.input_shape[0], info.n_outputs)
