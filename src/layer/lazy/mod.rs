//! Layers whose blob is elsewhere (a registry), read lazily through the blob store.
//! Dependencies: image (remote), layer, store, sys::zlib.

pub mod zran;
