"""Low-rank matrices for plain transformers: written by laserlm into a --factorized folder, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

loads it without laserlm. The model is the architecture's own transformers class; each matrix the folder lists
in config.json's `laser_factorized` is a product of two thin matrices (or, for a clustered reduction, one such
product per group of output rows), whose factors are read from laser_factors.safetensors beside the weights.
This file imports only torch, safetensors and transformers.
"""

import torch
import transformers
from torch import nn

BASE_CLASS = "__LASER_BASE_CLASS__"
FACTORS = "laser_factors.safetensors"
_Base = getattr(transformers, BASE_CLASS)


class LaserLowRank(nn.Module):
    """y = up(down(x)) (+ bias): a rank-k stand-in for an out x in matrix."""

    def __init__(self, in_features, out_features, rank, bias, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=False, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        y = self.up(self.down(x))
        return y + self.bias if self.bias is not None else y

    def load_factors(self, name, factors):
        self.down.weight.data.copy_(factors[f"{name}.down"])
        self.up.weight.data.copy_(factors[f"{name}.up"])


class LaserClusteredLowRank(nn.Module):
    """Output rows in groups, each a rank-k_j product; `order[i]` is the output feature position i computes."""

    def __init__(self, in_features, out_features, sizes, ranks, bias, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.down = nn.ModuleList(nn.Linear(in_features, k, bias=False, dtype=dtype) for k in ranks)
        self.up = nn.ModuleList(nn.Linear(k, s, bias=False, dtype=dtype) for k, s in zip(ranks, sizes))
        self.register_buffer("order", torch.arange(out_features), persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        y = torch.cat([up(down(x)) for down, up in zip(self.down, self.up)], -1)
        y = y.index_select(-1, torch.argsort(self.order))
        return y + self.bias if self.bias is not None else y

    def load_factors(self, name, factors):
        for j, (down, up) in enumerate(zip(self.down, self.up)):
            down.weight.data.copy_(factors[f"{name}.down.{j}"])
            up.weight.data.copy_(factors[f"{name}.up.{j}"])
        self.order.data.copy_(factors[f"{name}.order"])


def _stand_in(info, dtype):
    out_f, in_f = info["shape"]
    if "clusters" in info:
        return LaserClusteredLowRank(in_f, out_f, info["clusters"], info["ranks"], info["bias"], dtype)
    return LaserLowRank(in_f, out_f, info["rank"], info["bias"], dtype)


class LaserFactorizedModel(_Base):
    # The factors are not in model.safetensors: from_pretrained reads them from their own file after loading.
    _keys_to_ignore_on_load_missing = [r"\.(down|up)(\.\d+)?\.weight$"]

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        dtype = next(self.parameters()).dtype
        for name, info in getattr(config, "laser_factorized", {}).items():
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, child, _stand_in(info, dtype))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs}
        factors = load_file(cached_file(pretrained_model_name_or_path, FACTORS, **hub))
        with torch.no_grad():
            for name in model.config.laser_factorized:
                module = model.get_submodule(name)
                first = next(module.parameters())  # a down factor: where and in what dtype the model put it
                device, dtype = first.device, first.dtype
                module.load_factors(name, {k: v.to(device=device, dtype=dtype) for k, v in factors.items()
                                           if k.startswith(name + ".")})
        return model
