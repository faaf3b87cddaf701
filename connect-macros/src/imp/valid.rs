//! Checks that go beyond parsing: roles and shard counts. Every problem is
//! recorded; none stops the others being found.

use super::ast::{Element, Map};
use super::ctxt::Ctxt;

pub(super) fn element(cx: &Ctxt, element: &Element<'_>) {
    if let (Some(_), Some(client)) = (&element.attrs.server, &element.attrs.client) {
        cx.error_spanned_by(
            client,
            "an element joins server and client chains unless it says otherwise; \
             name one role to restrict it to that role, or none for both",
        );
    }
}

/// Most shards a map may ask for; beyond this `len` and `range` get slow.
const MAX_SHARDS: u64 = 1024;

pub(super) fn map(cx: &Ctxt, map: &Map<'_>) {
    if let Some(shards) = &map.attrs.shards {
        if !shards.suffix().is_empty() {
            cx.error_spanned_by(
                shards,
                format!(
                    "`shards` takes an unsuffixed integer: `shards = {}`",
                    shards.base10_digits()
                ),
            );
            return;
        }
        match shards.base10_parse::<u64>() {
            Ok(n) if n.is_power_of_two() && n <= MAX_SHARDS => {}
            Ok(n) => cx.error_spanned_by(
                shards,
                format!("`shards` must be a power of two from 1 to {MAX_SHARDS}, not {n}"),
            ),
            Err(err) => cx.error_spanned_by(shards, err),
        }
    }
}
