//! The ONNX model under audit, as attacks see it: a [`Model`] over its
//! classifier graph (logits) and its gradient graphs (one per loss, built on
//! first use).

use crate::attack::{Loss, Model};
use crate::error::{Error, Result};
use crate::onnx::{grad, ClassifierGraph, OnnxModel};
use crate::runtime::{self, Classifier, GradientModel, Logits, LossAndGrad, RuntimeOptions};
use std::collections::HashMap;

pub struct Victim<'a> {
    pub model: &'a OnnxModel,
    graph: &'a ClassifierGraph,
    classifier: Box<dyn Classifier>,
    image_shape: [usize; 3],
    runtime: RuntimeOptions,
    by_loss: HashMap<Loss, GradientModel>,
    classes: usize,
    /// Ops of the gradient graphs built so far that are differentiated by
    /// the straight-through estimator.
    approximated: Vec<String>,
}

impl<'a> Victim<'a> {
    /// Opens the classifier on the backend `runtime` names, and learns its
    /// number of classes from one forward pass of `probe` (one image).
    pub fn open(
        model: &'a OnnxModel,
        graph: &'a ClassifierGraph,
        image_shape: [usize; 3],
        runtime: RuntimeOptions,
        probe: &[f32],
    ) -> Result<Self> {
        let mut classifier = runtime::open(graph, image_shape, runtime)?;
        let classes = classifier.logits(probe, 1)?.classes;
        Ok(Victim {
            model,
            graph,
            classifier,
            image_shape,
            runtime,
            by_loss: HashMap::new(),
            classes,
            approximated: Vec::new(),
        })
    }

    /// Op types whose gradients the attacks approximated (straight-through).
    pub fn approximated(&self) -> &[String] {
        &self.approximated
    }

    /// What the user should know about how the model and its gradient
    /// graphs run (tract running one unoptimised, say).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.classifier.notes().to_vec();
        for gradient in self.by_loss.values() {
            for note in gradient.notes() {
                let note = format!("{note} (its gradient graph)");
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        notes
    }

    pub fn backend_name(&self) -> &'static str {
        self.classifier.backend_name()
    }

    pub fn device(&self) -> &'static str {
        self.classifier.device().as_str()
    }

    fn gradients(&mut self, loss: Loss) -> Result<&mut GradientModel> {
        if !self.by_loss.contains_key(&loss) {
            let gradient = grad::build(self.graph, self.image_shape, loss)?;
            for op in &gradient.approximated {
                if !self.approximated.contains(op) {
                    self.approximated.push(op.clone());
                }
            }
            let opened = GradientModel::open(&gradient, self.image_shape, self.runtime)?;
            self.by_loss.insert(loss, opened);
        }
        Ok(self.by_loss.get_mut(&loss).expect("inserted above"))
    }
}

impl Model for Victim<'_> {
    fn classes(&self) -> usize {
        self.classes
    }

    fn image_shape(&self) -> Option<[usize; 3]> {
        Some(self.image_shape)
    }

    fn logits(&mut self, images: &[f32], n: usize) -> Result<Logits> {
        self.classifier.logits(images, n)
    }

    fn loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        labels: &[i64],
        targets: Option<&[i64]>,
    ) -> Result<LossAndGrad> {
        if targets.is_some() != loss.is_targeted() {
            return Err(Error::Internal(format!(
                "the {} loss {} target classes",
                loss.as_str(),
                if loss.is_targeted() {
                    "needs"
                } else {
                    "takes no"
                }
            )));
        }
        self.gradients(loss)?
            .loss_and_grad(images, labels, targets, labels.len())
    }

    fn embedding_loss_and_grad(
        &mut self,
        loss: Loss,
        images: &[f32],
        reference: &[f32],
    ) -> Result<LossAndGrad> {
        let n = images.len() / self.image_shape.iter().product::<usize>().max(1);
        self.gradients(loss)?
            .embedding_loss_and_grad(images, reference, n)
    }
}
