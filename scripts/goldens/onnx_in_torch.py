"""An ONNX graph evaluated op by op with PyTorch functions, for autograd.

The reference for upat's gradient graph on exported models: PyTorch autograd
of the exported graph itself, in float64, not of the module it came from (the
exporter's float32 rewrites, BatchNorm folded into Conv for one, could put a
ReLU on the other side of a kink). onnx2torch was the first choice; its 1.5
releases fail on most of today's exports (opset 17/20 forms, the dynamo
exporter's graphs), so this module reads the ONNX semantics directly.

It covers the ops that image classifiers exported by torch.onnx use. Its
forward pass is checked against ONNX Runtime on every model it is used for
(scripts/goldens/timm_zoo.py refuses a golden whose logits disagree), so a
misreading of an op shows up there, not as a wrong reference gradient.

    graph = OnnxInTorch(onnx.load(path), dtype=torch.float64)
    logits = graph(x)          # x: a float tensor; differentiable
"""

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
BOOL_TYPE = onnx.TensorProto.BOOL


class Unsupported(Exception):
    """The graph uses an op, or a form of one, that this evaluator lacks."""


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def text(value):
    return value.decode() if isinstance(value, bytes) else value


class OnnxInTorch:
    def __init__(self, model, dtype=torch.float64):
        self.graph = model.graph
        self.dtype = dtype
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        if self.opset < 13:
            raise Unsupported(f"opset {self.opset}: only the opset-13+ forms are read")
        for node in self._all_nodes(self.graph):
            if node.domain not in ("", "ai.onnx"):
                raise Unsupported(f"op {node.domain}::{node.op_type}")
        self.constants = {t.name: self.tensor(numpy_helper.to_array(t)) for t in self.graph.initializer}

    def _all_nodes(self, graph):
        for node in graph.node:
            yield node
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from self._all_nodes(a.g)

    def tensor(self, array):
        """A numpy constant as this evaluator holds it: floats in `dtype`, ints as int64."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            return torch.from_numpy(array.astype(np.float64)).to(self.dtype)
        if array.dtype.kind == "b":
            return torch.from_numpy(array.copy())
        return torch.from_numpy(array.astype(np.int64))

    def __call__(self, x):
        return self.values(x)[self.graph.output[0].name]

    def values(self, x):
        """Every value of the top-level graph, by name, for input x."""
        values = dict(self.constants)
        initializers = set(self.constants)
        inputs = [i.name for i in self.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise Unsupported(f"{len(inputs)} graph inputs; one image input expected")
        values[inputs[0]] = x
        self.run(self.graph, values)
        return values

    def kinks(self):
        """(value name, kink points) of the top-level graph's piecewise-linear
        activations: where the side of a kink decides the gradient."""
        found = []
        for node in self.graph.node:
            a = attributes(node)
            if node.op_type in ("Relu", "LeakyRelu", "PRelu"):
                found.append((node.input[0], [0.0]))
            elif node.op_type == "HardSwish":
                found.append((node.input[0], [-3.0, 3.0]))
            elif node.op_type == "HardSigmoid":
                alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
                found.append((node.input[0], [-beta / alpha, (1 - beta) / alpha]))
            elif node.op_type == "Clip":
                bounds = [float(self.constants[n]) for n in node.input[1:] if n in self.constants]
                found.append((node.input[0], bounds))
        return found

    def run(self, graph, values):
        for node in graph.node:
            args = [values[name] if name else None for name in node.input]
            method = getattr(self, "op_" + node.op_type, None)
            if method is None:
                raise Unsupported(f"op {node.op_type}")
            a = attributes(node)
            a["_outputs"] = len([o for o in node.output if o])
            out = method(args, a, values)
            out = out if isinstance(out, (list, tuple)) else [out]
            for name, value in zip(node.output, out):
                if name:
                    values[name] = value

    # Constants and shapes.

    def op_Constant(self, args, a, values):
        if "value" in a:
            return self.tensor(numpy_helper.to_array(a["value"]))
        for key in ("value_float", "value_int"):
            if key in a:
                return self.tensor(np.array(a[key]))
        for key in ("value_floats", "value_ints"):
            if key in a:
                return self.tensor(np.array(a[key]))
        raise Unsupported("Constant form")

    def op_Shape(self, args, a, values):
        shape = torch.tensor(list(args[0].shape), dtype=torch.int64)
        start, end = a.get("start", 0), a.get("end", None)
        return shape[start:end]

    def op_Size(self, args, a, values):
        return torch.tensor(args[0].numel(), dtype=torch.int64)

    def op_ConstantOfShape(self, args, a, values):
        fill = self.tensor(numpy_helper.to_array(a["value"])) if "value" in a else torch.zeros(1, dtype=self.dtype)
        return fill.reshape(()).expand(*[int(d) for d in args[0]]).clone()

    def op_Range(self, args, a, values):
        start, limit, delta = args
        if start.is_floating_point():
            return torch.arange(start.item(), limit.item(), delta.item(), dtype=self.dtype)
        return torch.arange(int(start), int(limit), int(delta), dtype=torch.int64)

    def op_Cast(self, args, a, values):
        to = a["to"]
        if to in FLOAT_TYPES:
            return args[0].to(self.dtype)
        if to == BOOL_TYPE:
            return args[0].to(torch.bool)
        return args[0].to(torch.int64) if not args[0].is_floating_point() else torch.trunc(args[0]).to(torch.int64)

    def op_Identity(self, args, a, values):
        return args[0]

    def op_Dropout(self, args, a, values):
        return args[0]

    # Element-wise arithmetic.

    def op_Add(self, args, a, values):
        return args[0] + args[1]

    def op_Sub(self, args, a, values):
        return args[0] - args[1]

    def op_Mul(self, args, a, values):
        return args[0] * args[1]

    def op_Div(self, args, a, values):
        if args[0].is_floating_point():
            return args[0] / args[1]
        return torch.div(args[0], args[1], rounding_mode="trunc")

    def op_Mod(self, args, a, values):
        if a.get("fmod", 0):
            return torch.fmod(args[0], args[1])
        return torch.remainder(args[0], args[1])

    def op_Pow(self, args, a, values):
        base, exponent = args
        if not exponent.is_floating_point():
            exponent = exponent.to(base.dtype)
        return torch.pow(base, exponent)

    def op_Neg(self, args, a, values):
        return -args[0]

    def op_Abs(self, args, a, values):
        return torch.abs(args[0])

    def op_Sqrt(self, args, a, values):
        return torch.sqrt(args[0])

    def op_Reciprocal(self, args, a, values):
        return 1.0 / args[0]

    def op_Exp(self, args, a, values):
        return torch.exp(args[0])

    def op_Log(self, args, a, values):
        return torch.log(args[0])

    def op_Sin(self, args, a, values):
        return torch.sin(args[0])

    def op_Cos(self, args, a, values):
        return torch.cos(args[0])

    def op_Erf(self, args, a, values):
        return torch.erf(args[0])

    def op_Floor(self, args, a, values):
        return torch.floor(args[0])

    def op_Ceil(self, args, a, values):
        return torch.ceil(args[0])

    def op_Sign(self, args, a, values):
        return torch.sign(args[0])

    def op_Max(self, args, a, values):
        out = args[0]
        for other in args[1:]:
            out = torch.maximum(out, other)
        return out

    def op_Min(self, args, a, values):
        out = args[0]
        for other in args[1:]:
            out = torch.minimum(out, other)
        return out

    def op_Sum(self, args, a, values):
        out = args[0]
        for other in args[1:]:
            out = out + other
        return out

    def op_Mean(self, args, a, values):
        return self.op_Sum(args, a, values) / len(args)

    def op_Clip(self, args, a, values):
        x = args[0]
        low = args[1] if len(args) > 1 and args[1] is not None else None
        high = args[2] if len(args) > 2 and args[2] is not None else None
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x

    def op_Where(self, args, a, values):
        return torch.where(args[0], args[1], args[2])

    def op_Equal(self, args, a, values):
        return args[0] == args[1]

    def op_Less(self, args, a, values):
        return args[0] < args[1]

    def op_LessOrEqual(self, args, a, values):
        return args[0] <= args[1]

    def op_Greater(self, args, a, values):
        return args[0] > args[1]

    def op_GreaterOrEqual(self, args, a, values):
        return args[0] >= args[1]

    def op_Not(self, args, a, values):
        return torch.logical_not(args[0])

    def op_And(self, args, a, values):
        return torch.logical_and(args[0], args[1])

    def op_Or(self, args, a, values):
        return torch.logical_or(args[0], args[1])

    def op_IsNaN(self, args, a, values):
        return torch.isnan(args[0])

    def op_IsInf(self, args, a, values):
        return torch.isinf(args[0])

    # Activations.

    def op_Relu(self, args, a, values):
        return F.relu(args[0])

    def op_LeakyRelu(self, args, a, values):
        return F.leaky_relu(args[0], a.get("alpha", 0.01))

    def op_PRelu(self, args, a, values):
        x, slope = args
        return torch.where(x >= 0, x, x * slope)

    def op_Elu(self, args, a, values):
        return F.elu(args[0], a.get("alpha", 1.0))

    def op_Selu(self, args, a, values):
        alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
        x = args[0]
        return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))

    def op_Celu(self, args, a, values):
        return F.celu(args[0], a.get("alpha", 1.0))

    def op_Sigmoid(self, args, a, values):
        return torch.sigmoid(args[0])

    def op_HardSigmoid(self, args, a, values):
        alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
        return torch.clamp(alpha * args[0] + beta, 0.0, 1.0)

    def op_HardSwish(self, args, a, values):
        return args[0] * torch.clamp(args[0] / 6.0 + 0.5, 0.0, 1.0)

    def op_Tanh(self, args, a, values):
        return torch.tanh(args[0])

    def op_Softplus(self, args, a, values):
        return torch.log1p(torch.exp(args[0]))

    def op_Softsign(self, args, a, values):
        return args[0] / (1 + torch.abs(args[0]))

    def op_Mish(self, args, a, values):
        return args[0] * torch.tanh(F.softplus(args[0]))

    def op_Gelu(self, args, a, values):
        return F.gelu(args[0], approximate=text(a.get("approximate", "none")))

    def op_Softmax(self, args, a, values):
        return torch.softmax(args[0], dim=a.get("axis", -1))

    def op_LogSoftmax(self, args, a, values):
        return torch.log_softmax(args[0], dim=a.get("axis", -1))

    # Linear algebra.

    def op_MatMul(self, args, a, values):
        return torch.matmul(args[0], args[1])

    def op_Gemm(self, args, a, values):
        A, B = args[0], args[1]
        if a.get("transA", 0):
            A = A.transpose(0, 1)
        if a.get("transB", 0):
            B = B.transpose(0, 1)
        out = a.get("alpha", 1.0) * (A @ B)
        if len(args) > 2 and args[2] is not None:
            out = out + a.get("beta", 1.0) * args[2]
        return out

    def op_Einsum(self, args, a, values):
        return torch.einsum(text(a["equation"]), *args)

    # Convolution and pooling.

    def _pads(self, a, spatial, x_shape, kernel, strides, dilations):
        """ONNX pads (begins then ends) with auto_pad resolved."""
        auto = text(a.get("auto_pad", "NOTSET"))
        if auto in ("NOTSET", "VALID"):
            return list(a.get("pads", [0] * (2 * spatial))) if auto == "NOTSET" else [0] * (2 * spatial)
        begins, ends = [], []
        for i in range(spatial):
            size = x_shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
        return begins + ends

    def op_Conv(self, args, a, values):
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else None
        spatial = w.dim() - 2
        kernel = list(w.shape[2:])
        strides = a.get("strides", [1] * spatial)
        dilations = a.get("dilations", [1] * spatial)
        pads = self._pads(a, spatial, x.shape, kernel, strides, dilations)
        begins, ends = pads[:spatial], pads[spatial:]
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
        if begins == ends:
            return conv(x, w, b, strides, begins, dilations, a.get("group", 1))
        torch_pads = [p for i in reversed(range(spatial)) for p in (begins[i], ends[i])]
        return conv(F.pad(x, torch_pads), w, b, strides, 0, dilations, a.get("group", 1))

    def op_ConvTranspose(self, args, a, values):
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else None
        spatial = w.dim() - 2
        if text(a.get("auto_pad", "NOTSET")) != "NOTSET" or "output_shape" in a:
            raise Unsupported("ConvTranspose with auto_pad or output_shape")
        pads = a.get("pads", [0] * (2 * spatial))
        if pads[:spatial] != pads[spatial:]:
            raise Unsupported("ConvTranspose with asymmetric pads")
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
        return conv(x, w, b, a.get("strides", [1] * spatial), pads[:spatial],
                    a.get("output_padding", [0] * spatial), a.get("group", 1), a.get("dilations", [1] * spatial))

    def op_MaxPool(self, args, a, values):
        x = args[0]
        kernel = a["kernel_shape"]
        spatial = len(kernel)
        strides = a.get("strides", [1] * spatial)
        dilations = a.get("dilations", [1] * spatial)
        pads = self._pads(a, spatial, x.shape, kernel, strides, dilations)
        begins, ends = pads[:spatial], pads[spatial:]
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        ceil = bool(a.get("ceil_mode", 0))
        if a["_outputs"] > 1:
            # Indices into the whole tensor, row-major (storage_order 0).
            if begins != ends or a.get("storage_order", 0):
                raise Unsupported("MaxPool indices with asymmetric pads or column-major order")
            out, indices = pool(x, kernel, strides, begins, dilations, ceil_mode=ceil, return_indices=True)
            plane = int(np.prod(x.shape[2:]))
            offsets = torch.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * spatial) * plane
            return [out, indices + offsets]
        if begins != ends:
            torch_pads = [p for i in reversed(range(spatial)) for p in (begins[i], ends[i])]
            x, begins = F.pad(x, torch_pads, value=-math.inf), [0] * spatial
        return pool(x, kernel, strides, begins, dilations, ceil_mode=ceil)

    def op_AveragePool(self, args, a, values):
        x = args[0]
        kernel = a["kernel_shape"]
        spatial = len(kernel)
        strides = a.get("strides", [1] * spatial)
        pads = self._pads(a, spatial, x.shape, kernel, strides, [1] * spatial)
        begins, ends = pads[:spatial], pads[spatial:]
        include = bool(a.get("count_include_pad", 0))
        ceil = bool(a.get("ceil_mode", 0))
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        if begins != ends:
            if not include:
                raise Unsupported("AveragePool with asymmetric pads excluding the padding")
            torch_pads = [p for i in reversed(range(spatial)) for p in (begins[i], ends[i])]
            x, begins = F.pad(x, torch_pads), [0] * spatial
        if any(2 * p > k for p, k in zip(begins, kernel)):
            raise Unsupported("AveragePool with padding over half the kernel")
        return pool(x, kernel, strides, begins, ceil_mode=ceil, count_include_pad=include)

    def op_GlobalAveragePool(self, args, a, values):
        x = args[0]
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    def op_GlobalMaxPool(self, args, a, values):
        x = args[0]
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

    # Normalisation.

    def op_BatchNormalization(self, args, a, values):
        x, scale, bias, mean, var = args[:5]
        shape = [1, -1] + [1] * (x.dim() - 2)
        eps = a.get("epsilon", 1e-5)
        return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)

    def op_LayerNormalization(self, args, a, values):
        x, scale = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        axis = a.get("axis", -1) % x.dim()
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        out = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
        return out + bias if bias is not None else out

    def op_InstanceNormalization(self, args, a, values):
        x, scale, bias = args
        dims = tuple(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale.reshape(shape) + bias.reshape(shape)

    def op_GroupNormalization(self, args, a, values):
        x, scale, bias = args
        groups = a["num_groups"]
        n, c = x.shape[0], x.shape[1]
        grouped = x.reshape(n, groups, -1)
        mean = grouped.mean(dim=2, keepdim=True)
        var = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
        normed = ((grouped - mean) / torch.sqrt(var + a.get("epsilon", 1e-5))).reshape(x.shape)
        shape = [1, -1] + [1] * (x.dim() - 2)
        if scale.numel() == groups and c != groups:  # opset 18's per-group scale
            scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
        return normed * scale.reshape(shape) + bias.reshape(shape)

    def op_LpNormalization(self, args, a, values):
        p = a.get("p", 2)
        return args[0] / torch.linalg.vector_norm(args[0], ord=p, dim=a.get("axis", -1), keepdim=True)

    # Reductions (opset 18 takes axes as an input, earlier ones as an attribute).

    def _axes(self, args, a, x):
        if len(args) > 1 and args[1] is not None and args[1].numel() > 0:
            axes = [int(v) for v in args[1]]
        elif "axes" in a:
            axes = list(a["axes"])
        else:
            axes = []
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return None
            axes = list(range(x.dim()))
        return tuple(ax % x.dim() for ax in axes)

    def _reduce(self, args, a, fn):
        x = args[0]
        axes = self._axes(args, a, x)
        if axes is None:
            return x
        return fn(x, axes, bool(a.get("keepdims", 1)))

    def op_ReduceMean(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: x.mean(dim=d, keepdim=k))

    def op_ReduceSum(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: x.sum(dim=d, keepdim=k))

    def op_ReduceMax(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: x.amax(dim=d, keepdim=k))

    def op_ReduceMin(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: x.amin(dim=d, keepdim=k))

    def op_ReduceProd(self, args, a, values):
        def prod(x, d, k):
            for axis in sorted(d, reverse=True):
                x = x.prod(dim=axis, keepdim=k)
            return x

        return self._reduce(args, a, prod)

    def op_ReduceL2(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)))

    def op_ReduceL1(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: x.abs().sum(dim=d, keepdim=k))

    def op_ReduceSumSquare(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: (x * x).sum(dim=d, keepdim=k))

    def op_ReduceLogSumExp(self, args, a, values):
        return self._reduce(args, a, lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k))

    def op_CumSum(self, args, a, values):
        x, axis = args[0], int(args[1])
        if a.get("reverse", 0):
            x = x.flip(axis)
        if a.get("exclusive", 0):
            out = torch.cumsum(x, axis) - x
        else:
            out = torch.cumsum(x, axis)
        return out.flip(axis) if a.get("reverse", 0) else out

    # Moving elements around.

    def op_Reshape(self, args, a, values):
        x, shape = args[0], [int(d) for d in args[1]]
        if not a.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)

    def op_Flatten(self, args, a, values):
        x = args[0]
        axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
        outer = int(np.prod(x.shape[:axis])) if axis else 1
        return x.reshape(outer, -1)

    def op_Transpose(self, args, a, values):
        perm = a.get("perm", list(reversed(range(args[0].dim()))))
        return args[0].permute(*perm)

    def op_Squeeze(self, args, a, values):
        x = args[0]
        axes = [int(v) for v in args[1]] if len(args) > 1 and args[1] is not None else None
        if axes is None:
            return x.squeeze()
        for axis in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(axis)
        return x

    def op_Unsqueeze(self, args, a, values):
        x = args[0]
        axes = [int(v) for v in args[1]]
        rank = x.dim() + len(axes)
        for axis in sorted(ax % rank for ax in axes):
            x = x.unsqueeze(axis)
        return x

    def op_Concat(self, args, a, values):
        parts = [t for t in args if t is not None]
        if any(t.is_floating_point() for t in parts):
            parts = [t.to(self.dtype) for t in parts]
        return torch.cat(parts, dim=a["axis"])

    def op_Split(self, args, a, values, num_outputs=None):
        x = args[0]
        axis = a.get("axis", 0) % x.dim()
        if len(args) > 1 and args[1] is not None:
            sizes = [int(v) for v in args[1]]
        elif "split" in a:
            sizes = list(a["split"])
        else:
            count = a.get("num_outputs")
            if count is None:
                raise Unsupported("Split without sizes or num_outputs")
            chunk = -(-x.shape[axis] // count)
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
        return list(torch.split(x, sizes, dim=axis))

    def op_Slice(self, args, a, values):
        x = args[0]
        starts, ends = [int(v) for v in args[1]], [int(v) for v in args[2]]
        axes = [int(v) for v in args[3]] if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = [int(v) for v in args[4]] if len(args) > 4 and args[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis %= x.dim()
            size = x.shape[axis]
            if step > 0:
                start = max(0, min(size, start + size if start < 0 else start))
                end = max(0, min(size, end + size if end < 0 else end))
                index[axis] = slice(start, end, step)
            else:
                start = max(-1, min(size - 1, start + size if start < 0 else start))
                end = max(-1, min(size - 1, end + size if end < 0 else end))
                positions = torch.arange(start, end, step)
                x = x.index_select(axis, positions)
                continue
        return x[tuple(index)]

    def op_Gather(self, args, a, values):
        x, indices = args
        axis = a.get("axis", 0) % x.dim()
        indices = torch.where(indices < 0, indices + x.shape[axis], indices)
        flat = x.index_select(axis, indices.reshape(-1))
        return flat.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])

    def op_GatherElements(self, args, a, values):
        x, indices = args
        axis = a.get("axis", 0) % x.dim()
        indices = torch.where(indices < 0, indices + x.shape[axis], indices)
        return torch.gather(x, axis, indices)

    def op_GatherND(self, args, a, values):
        x, indices = args
        if a.get("batch_dims", 0):
            raise Unsupported("GatherND with batch_dims")
        depth = indices.shape[-1]
        flat = indices.reshape(-1, depth)
        picked = x[tuple(flat[:, i] for i in range(depth))]
        return picked.reshape(indices.shape[:-1] + x.shape[depth:])

    def op_ScatterND(self, args, a, values):
        x, indices, updates = args
        reduction = text(a.get("reduction", "none"))
        depth = indices.shape[-1]
        flat = indices.reshape(-1, depth)
        index = tuple(flat[:, i] for i in range(depth))
        upd = updates.reshape((flat.shape[0],) + x.shape[depth:])
        if reduction == "none":
            return x.index_put(index, upd)
        if reduction == "add":
            return x.index_put(index, upd, accumulate=True)
        raise Unsupported(f"ScatterND reduction {reduction}")

    def op_ScatterElements(self, args, a, values):
        x, indices, updates = args
        axis = a.get("axis", 0) % x.dim()
        reduction = text(a.get("reduction", "none"))
        if reduction == "none":
            return x.scatter(axis, indices, updates)
        if reduction == "add":
            return x.scatter_add(axis, indices, updates)
        raise Unsupported(f"ScatterElements reduction {reduction}")

    def op_Expand(self, args, a, values):
        x, shape = args[0], [int(d) for d in args[1]]
        rank = max(x.dim(), len(shape))
        shape = [1] * (rank - len(shape)) + shape
        dims = [1] * (rank - x.dim()) + list(x.shape)
        target = [d if s == 1 else s for s, d in zip(shape, dims)]
        return x.reshape(dims).expand(target)

    def op_Tile(self, args, a, values):
        return args[0].repeat(*[int(r) for r in args[1]])

    def op_Pad(self, args, a, values):
        x, pads = args[0], [int(p) for p in args[1]]
        mode = text(a.get("mode", "constant"))
        value = args[2] if len(args) > 2 and args[2] is not None else None
        rank = len(pads) // 2
        if len(args) > 3 and args[3] is not None:
            axes = [int(v) % x.dim() for v in args[3]]
        elif rank == x.dim():
            axes = list(range(x.dim()))
        else:
            raise Unsupported("Pad with fewer pads than twice the rank")
        full = [0] * (2 * x.dim())
        for i, axis in enumerate(axes):
            full[axis], full[x.dim() + axis] = pads[i], pads[rank + i]
        torch_pads = [p for i in reversed(range(x.dim())) for p in (full[i], full[x.dim() + i])]
        while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
            torch_pads = torch_pads[:-2]
        if any(p < 0 for p in torch_pads):
            raise Unsupported("Pad with negative pads")
        if mode == "constant":
            return F.pad(x, torch_pads, value=float(value) if value is not None and value.numel() else 0.0)
        return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])

    def op_DepthToSpace(self, args, a, values):
        x, b = args[0], a["blocksize"]
        n, c, h, w = x.shape
        if text(a.get("mode", "DCR")) == "DCR":
            x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            x = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, c // (b * b), h * b, w * b)

    def op_SpaceToDepth(self, args, a, values):
        x, b = args[0], a["blocksize"]
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return x.reshape(n, c * b * b, h // b, w // b)

    def op_OneHot(self, args, a, values):
        indices, depth, pair = args
        depth = int(depth)
        indices = torch.where(indices < 0, indices + depth, indices)
        hot = F.one_hot(indices.to(torch.int64), depth)
        axis = a.get("axis", -1) % hot.dim()
        hot = hot.movedim(-1, axis)
        return torch.where(hot.bool(), pair[1], pair[0])

    def op_Trilu(self, args, a, values):
        k = int(args[1]) if len(args) > 1 and args[1] is not None else 0
        return torch.triu(args[0], k) if a.get("upper", 1) else torch.tril(args[0], k)

    def op_Resize(self, args, a, values):
        x = args[0]
        scales = args[2] if len(args) > 2 and args[2] is not None and args[2].numel() else None
        sizes = args[3] if len(args) > 3 and args[3] is not None and args[3].numel() else None
        mode = text(a.get("mode", "nearest"))
        coords = text(a.get("coordinate_transformation_mode", "half_pixel"))
        if "axes" in a or a.get("antialias", 0):
            raise Unsupported("Resize with axes or antialias")
        if sizes is not None:
            out = [int(s) for s in sizes[2:]]
        else:
            if [float(s) for s in scales[:2]] != [1.0, 1.0]:
                raise Unsupported("Resize over batch or channels")
            out = [int(math.floor(d * float(s))) for d, s in zip(x.shape[2:], scales[2:])]
        if mode == "nearest":
            nearest = text(a.get("nearest_mode", "round_prefer_floor"))
            if coords == "asymmetric" and nearest == "floor":
                return F.interpolate(x, size=out, mode="nearest")
            if coords == "half_pixel" and nearest in ("round_prefer_floor", "round_prefer_ceil") and all(o % d == 0 for o, d in zip(out, x.shape[2:])):
                return F.interpolate(x, size=out, mode="nearest-exact")
            raise Unsupported(f"Resize nearest {coords}/{nearest}")
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(out)] if mode == "linear" else "bicubic" if mode == "cubic" else None
        if torch_mode is None:
            raise Unsupported(f"Resize mode {mode}")
        if mode == "cubic" and a.get("cubic_coeff_a", -0.75) != -0.75:
            raise Unsupported("Resize cubic with a != -0.75")
        if coords == "align_corners":
            return F.interpolate(x, size=out, mode=torch_mode, align_corners=True)
        if coords in ("pytorch_half_pixel", "half_pixel") and (coords == "half_pixel" or all(o > 1 for o in out)):
            if scales is not None:
                return F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode=torch_mode, align_corners=False)
            return F.interpolate(x, size=out, mode=torch_mode, align_corners=False)
        raise Unsupported(f"Resize {mode} {coords}")

    def op_If(self, args, a, values):
        branch = a["then_branch"] if bool(args[0]) else a["else_branch"]
        scope = dict(values)
        self.run(branch, scope)
        return [scope[o.name] for o in branch.output]
