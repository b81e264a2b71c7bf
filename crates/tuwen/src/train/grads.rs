//! Gradients by parameter name, in PyTorch's names and layouts, to compare with PyTorch's.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Gradients;

/// Where a module visitor is: the field path and the container types around it.
#[derive(Default)]
pub(crate) struct ModulePath {
    /// Field names from the root, the parameter's own name last.
    pub path: Vec<String>,
    containers: Vec<String>,
}

impl ModulePath {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    pub(crate) fn exit(&mut self) {
        self.path.pop();
        self.containers.pop();
    }

    /// The innermost user-defined module, e.g. "Struct:Linear".
    pub(crate) fn module_type(&self) -> &str {
        self.containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:"))
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The dotted path without the variants of enums the module passes through, so that a
    /// network's ids do not change when it is wrapped in an enum of families.
    pub(crate) fn stable_path(&self) -> String {
        self.path
            .iter()
            .zip(&self.containers)
            .filter(|(_, c)| !c.starts_with("Enum:"))
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The parameter's own name.
    pub(crate) fn name(&self) -> &str {
        self.path.last().map(String::as_str).unwrap_or("")
    }
}

/// Where gradients come from: a backward pass, or gradients already gathered by parameter.
enum Source<'a> {
    Backward(&'a Gradients),
    Params(&'a GradientsParams),
}

struct GradVisitor<'a> {
    grads: Source<'a>,
    at: ModulePath,
    out: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
}

impl ModuleVisitor for GradVisitor<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.at.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.at.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = match &self.grads {
            Source::Backward(g) => param.val().grad(g),
            Source::Params(g) => g.get::<D>(param.id),
        };
        let Some(grad) = grad else {
            return;
        };
        let module = self.at.module_type();
        let mut name = self.at.path.clone();
        let last = self.at.name();
        let mut shape = grad.dims().to_vec();
        let grad = if module == "Struct:Linear" && last == "weight" && D == 2 {
            // burn stores [in, out]; PyTorch [out, in].
            shape.reverse();
            grad.transpose()
        } else {
            grad
        };
        let values = crate::pipeline::to_vec(grad).unwrap_or_default();
        let norm = matches!(
            module,
            "Struct:LayerNorm" | "Struct:BatchNorm" | "Struct:GroupNorm"
        );
        if norm && let Some(l) = name.last_mut() {
            *l = match l.as_str() {
                "gamma" => "weight".into(),
                "beta" => "bias".into(),
                other => other.to_string(),
            };
        }
        self.out.insert(name.join("."), (values, shape));
    }
}

/// Every float parameter's gradient in `grads`, keyed by the transformers tensor name, in
/// PyTorch's layout (linear weights `[out, in]`). Parameters without a gradient are left out.
pub fn named_grads<M: Module>(
    module: &M,
    grads: &Gradients,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let mut v = GradVisitor {
        grads: Source::Backward(grads),
        at: ModulePath::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// [`named_grads`] of gradients gathered by parameter (e.g. accumulated over micro-batches).
pub fn named_param_grads<M: Module>(
    module: &M,
    grads: &GradientsParams,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let mut v = GradVisitor {
        grads: Source::Params(grads),
        at: ModulePath::default(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}
