//! `rimgfs commit`: a new image made of an image's layers, copied as they are, and one more
//! layer holding what an overlayfs upper directory changed.
//!
//! In steps, each in its own file:
//! 1. `layer_tar`: the new layer, an uncompressed OCI layer tar of the merged view's
//!    changes, written into a staging directory beside the output;
//! 2. `manifest`: the image JSON: the copied layers' descriptors, the config with the new
//!    layer's diff_id and history entry, the manifest, the index (and Docker's
//!    `manifest.json`);
//! 3. `output`: the layout in one of the three formats (`docker-archive`, `oci-archive`,
//!    `oci`), renamed into place only once complete.
//!
//! Dependencies: changes, stack, tree, image, error.

mod layer_tar;
mod manifest;
mod output;

use std::path::PathBuf;

use crate::changes::MergedView;
use crate::error::Result;
use crate::image::digest::Digest;
use crate::stack::Stack;

pub use manifest::{CREATED_BY, MT_LAYER_TAR, rfc3339};

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A `docker save` archive in Docker 25's shape: an OCI layout plus `manifest.json`.
    DockerArchive,
    /// An OCI image layout in a tar.
    OciArchive,
    /// An OCI image layout directory.
    Oci,
}

/// What `commit` writes, and where.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// The output file (directory for [`Format::Oci`]).
    pub output: PathBuf,
    /// The reference to name the image by.
    pub tag: Option<String>,
    /// The output format.
    pub format: Format,
    /// The history entry's comment.
    pub message: Option<String>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Digest of the new manifest.
    pub manifest: Digest,
    /// diff_id (= blob digest) of the new layer.
    pub layer: Digest,
}

/// Writes the new image: `stack`'s layers plus a layer of `view`'s changes.
pub fn commit(stack: &Stack, view: &MergedView<'_>, opts: &CommitOptions) -> Result<Committed> {
    output::check_target(opts.format, &opts.output)?;
    let staging = output::Staging::new(&opts.output)?;

    let layer_path = staging.path.join("layer.tar");
    let (layer, layer_size) = layer_tar::write_layer(view, &layer_path)?;

    let mut layers = manifest::copied_layers(&stack.image)?;
    layers.push(manifest::Blob::file(layer.clone(), layer_size, layer_path));
    let config = manifest::config(&stack.image, &layer, opts.message.as_deref())?;
    let manifest = manifest::manifest(&config, &layers);
    let committed = Committed {
        manifest: manifest.digest.clone(),
        layer,
    };

    let members = manifest::layout(opts.format, opts.tag.as_deref(), layers, config, manifest);
    output::write(opts.format, &members, &staging, &opts.output)?;
    Ok(committed)
}
