//! Ops that only select, move or copy elements. Slice with any steps,
//! Gather with computed indices, GatherElements, GatherND and Tile: their
//! gradient is found by replaying the op on the *positions* of x's elements,
//! then adding each output's gradient at the position it came from
//! (ScatterElements with `reduction = add`, so elements copied several times
//! accumulate). DepthToSpace and SpaceToDepth (no int64 kernels in ONNX
//! Runtime) are undone as the reshape-transpose-reshape they are; CumSum
//! sums the other way.

use super::{only_first, Ctx};
use crate::error::Result;
use crate::onnx::grad::emit::{attr_int, attr_ints, attr_string, attr_tensor, float_tensor};

type Grads = Result<Vec<Option<String>>>;

/// The node replayed on int64 positions of x's elements instead of x.
pub fn through_positions(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let others = ctx.node.input[1..].to_vec();
    replay_on_positions(ctx, grads, &others)
}

/// [`through_positions`] with the node's other inputs given: `""` drops
/// an optional one that would not type-check against int64 positions.
pub fn replay_on_positions(ctx: &mut Ctx, grads: &[Option<String>], others: &[String]) -> Grads {
    let g = ctx.grad(grads)?;
    let x = ctx.input(0).to_string();
    let shape = ctx.emit.shape_of(&x);
    let count = ctx
        .emit
        .op("ReduceProd", &[&shape], vec![attr_int("keepdims", 0)]);
    let zero = ctx.emit.const_i64(&[], &[0]);
    let one = ctx.emit.const_i64(&[], &[1]);
    let range = ctx.emit.op("Range", &[&zero, &count, &one], vec![]);
    let positions = ctx.emit.binary("Reshape", &range, &shape);
    let mut inputs: Vec<&str> = vec![&positions];
    inputs.extend(others.iter().map(String::as_str));
    let moved = ctx
        .emit
        .op(&ctx.node.op_type, &inputs, ctx.node.attribute.clone());
    let flat = ctx.emit.ints(&[-1]);
    let flat_positions = ctx.emit.binary("Reshape", &moved, &flat);
    let flat_g = ctx.emit.binary("Reshape", &g, &flat);
    let length = ctx.emit.binary("Reshape", &count, &flat);
    let zeros = ctx.emit.op(
        "ConstantOfShape",
        &[&length],
        vec![attr_tensor("value", float_tensor("", &[1], &[0.0]))],
    );
    let scattered = ctx.emit.op(
        "ScatterElements",
        &[&zeros, &flat_positions, &flat_g],
        vec![attr_int("axis", 0), attr_string("reduction", "add")],
    );
    Ok(only_first(ctx.emit.binary("Reshape", &scattered, &shape)))
}

/// CumSum: the gradient is the cumulative sum in the other direction.
pub fn cum_sum(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let reverse = ctx.int_attr("reverse", 0) == 0;
    let exclusive = ctx.int_attr("exclusive", 0);
    let axis = ctx.input(1).to_string();
    Ok(only_first(ctx.emit.op(
        "CumSum",
        &[&g, &axis],
        vec![
            attr_int("exclusive", exclusive),
            attr_int("reverse", i64::from(reverse)),
        ],
    )))
}

/// DepthToSpace is a reshape, a transpose and a reshape (ONNX's definition;
/// ONNX Runtime has no int64 kernel to replay it on positions): undo them.
pub fn depth_to_space(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let [c, h, w] = spatial_4d(ctx)?;
    let b = ctx.int_attr("blocksize", 0);
    if b < 1 || c % (b * b) != 0 {
        return super::fail(format!("DepthToSpace with blocksize {b} on {c} channels"));
    }
    let depth = c / (b * b);
    // The forward transposed to [N, C/b², H, b, W, b]; the inverse
    // permutation takes that back to the forward's first reshape.
    let inverse = if ctx.string_attr("mode", "DCR") == "CRD" {
        [0, 1, 3, 5, 2, 4]
    } else {
        [0, 3, 5, 1, 2, 4]
    };
    let blocks = ctx.emit.ints(&[0, depth, h, b, w, b]);
    let blocked = ctx.emit.binary("Reshape", &g, &blocks);
    let moved = ctx
        .emit
        .op("Transpose", &[&blocked], vec![attr_ints("perm", &inverse)]);
    Ok(only_first(ctx.emit.reshape_like(&moved, ctx.input(0))))
}

/// SpaceToDepth: reshape [N, C, H/b, b, W/b, b], transpose to
/// [N, b, b, C, H/b, W/b], reshape; undone in reverse.
pub fn space_to_depth(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let [c, h, w] = spatial_4d(ctx)?;
    let b = ctx.int_attr("blocksize", 0);
    if b < 1 || h % b != 0 || w % b != 0 {
        return super::fail(format!("SpaceToDepth with blocksize {b} on {h}x{w}"));
    }
    let blocks = ctx.emit.ints(&[0, b, b, c, h / b, w / b]);
    let blocked = ctx.emit.binary("Reshape", &g, &blocks);
    let moved = ctx.emit.op(
        "Transpose",
        &[&blocked],
        vec![attr_ints("perm", &[0, 3, 4, 1, 5, 2])],
    );
    Ok(only_first(ctx.emit.reshape_like(&moved, ctx.input(0))))
}

/// C, H, W of a 4-D input whose only batch-dependent axis is the first.
fn spatial_4d(ctx: &Ctx) -> Result<[i64; 3]> {
    let x = ctx.shape(ctx.input(0))?;
    if x.rank() != 4 || x.dynamic[1..].iter().any(|&d| d) {
        return super::fail(format!("{} of a tensor that is not NCHW", ctx.node.op_type));
    }
    Ok([x.dims[1] as i64, x.dims[2] as i64, x.dims[3] as i64])
}

/// ScatterElements and ScatterND (reduction `none` or `add`): `data`'s
/// gradient is g where no update landed (all of g with `add`), the
/// updates' gradient is g gathered at the indices they were written to.
pub fn scatter(ctx: &mut Ctx, grads: &[Option<String>]) -> Grads {
    let g = ctx.grad(grads)?;
    let elements = ctx.node.op_type == "ScatterElements";
    let reduction = ctx.string_attr("reduction", "none");
    if reduction != "none" && reduction != "add" {
        return super::fail(format!(
            "{} with reduction {reduction} is not supported",
            ctx.node.op_type
        ));
    }
    let (data, indices, updates) = (
        ctx.input(0).to_string(),
        ctx.input(1).to_string(),
        ctx.input(2).to_string(),
    );
    let axis = vec![attr_int("axis", ctx.int_attr("axis", 0))];
    let axis_attr = || if elements { axis.clone() } else { vec![] };
    let data_grad = if !ctx.wants(0) {
        None
    } else if reduction == "add" {
        Some(g.clone())
    } else {
        // 1 where data survives, 0 where an update overwrote it.
        let shape = ctx.emit.shape_of(&data);
        let ones = ctx.emit.op(
            "ConstantOfShape",
            &[&shape],
            vec![attr_tensor("value", float_tensor("", &[1], &[1.0]))],
        );
        let zeros = ctx.emit.zeros_like(&updates);
        let kept = ctx
            .emit
            .op(&ctx.node.op_type, &[&ones, &indices, &zeros], axis_attr());
        Some(ctx.emit.binary("Mul", &g, &kept))
    };
    let updates_grad = ctx.wants(2).then(|| {
        let gather = if elements {
            "GatherElements"
        } else {
            "GatherND"
        };
        ctx.emit.op(gather, &[&g, &indices], axis_attr())
    });
    Ok(vec![data_grad, None, updates_grad])
}
