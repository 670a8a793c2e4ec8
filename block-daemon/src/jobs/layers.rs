//! Walking the chain a node serves: the image at a depth (0: the top), and whether the
//! images between two depths hold data of a range (what a stream or commit copies).

use std::sync::Arc;

use crate::formats::{Format, FormatError};

/// The image `depth` levels below `top` (0: `top` itself), if the chain is that deep.
pub fn layer_at(top: &Arc<dyn Format>, depth: usize) -> Option<Arc<dyn Format>> {
    let mut at = top.clone();
    for _ in 0..depth {
        at = at.backing()?;
    }
    Some(at)
}

/// Whether any image at depths `from..to` (`to` None: to the bottom) below `top` holds
/// bytes of `offset..offset + len` as its own. An image smaller than the range holds
/// nothing past its end.
pub fn allocated_between(
    top: &Arc<dyn Format>,
    from: usize,
    to: Option<usize>,
    offset: u64,
    len: u64,
) -> Result<bool, FormatError> {
    let mut layer = layer_at(top, from);
    let mut depth = from;
    while let Some(image) = layer {
        if to.is_some_and(|t| depth >= t) {
            break;
        }
        let end = (offset + len).min(image.virtual_size());
        let mut at = offset;
        while at < end {
            let (own, n) = image.allocated(at, end - at)?;
            if own {
                return Ok(true);
            }
            at += n.max(1);
        }
        layer = image.backing();
        depth += 1;
    }
    Ok(false)
}
