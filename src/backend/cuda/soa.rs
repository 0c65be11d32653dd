//! Structure-of-arrays batches built and read on the host by parallel
//! tasks. The kernels read limb `j` of item `i` at `[j * n + i]`, so that a
//! warp's loads coalesce. Encoding inputs into that layout and reading
//! results back out of it is per-item work on the host that grows with the
//! batch, and at GPU rates it is a large share of a batch's time:
//!
//! - RSA-2048 PKCS#1 v1.5 costs about 1 µs per item on one core, PSS about
//!   2.7 µs (on the 2-core CI machine);
//! - P-256 costs about 0.45 µs.
//!
//! A batch of 65,536 therefore spends tens of milliseconds on one core,
//! while the device signs it in a few. So batches of more than
//! [`TASK_ITEMS`] items are split into tasks of that many on rayon's global
//! pool. Smaller batches stay on the calling thread, because a hand-off to
//! the pool costs more than their work.

use rayon::prelude::*;

/// Items per parallel task, and the largest batch handled on the calling
/// thread.
pub const TASK_ITEMS: usize = 512;

/// The most limbs an item has (RSA-4096: 128 words).
pub const MAX_LIMBS: usize = 128;

/// Fills `dst`, a batch of `n` items of `limbs` words each in
/// structure-of-arrays order, by calling `item(i, words)` for every item
/// `i`. `words` is one item's limbs, least significant first, zeroed before
/// each call.
///
/// # Errors
///
/// The first error an item returns (in no particular order when the batch
/// runs in parallel).
///
/// # Panics
///
/// If `dst` does not hold `n * limbs` words, or `limbs` exceeds
/// [`MAX_LIMBS`].
pub fn fill<E: Send>(
    dst: &mut [u32],
    n: usize,
    limbs: usize,
    item: impl Fn(usize, &mut [u32]) -> Result<(), E> + Sync,
) -> Result<(), E> {
    assert_eq!(
        dst.len(),
        n * limbs,
        "a batch of {n} items of {limbs} limbs"
    );
    assert!(limbs <= MAX_LIMBS, "{limbs} limbs per item");
    if n == 0 || limbs == 0 {
        return Ok(());
    }
    // Each task owns the same item range of every column: `tasks[t][j]` is
    // column j's slice for task t's items. Built from disjoint chunks, so
    // the tasks can write in parallel without sharing anything.
    let n_tasks = n.div_ceil(TASK_ITEMS);
    let mut tasks: Vec<Vec<&mut [u32]>> = (0..n_tasks).map(|_| Vec::with_capacity(limbs)).collect();
    for column in dst.chunks_mut(n) {
        for (t, part) in column.chunks_mut(TASK_ITEMS).enumerate() {
            tasks[t].push(part);
        }
    }
    let run = |(t, mut columns): (usize, Vec<&mut [u32]>)| -> Result<(), E> {
        let mut words = [0u32; MAX_LIMBS];
        let len = columns[0].len();
        for k in 0..len {
            let w = &mut words[..limbs];
            w.fill(0);
            item(t * TASK_ITEMS + k, w)?;
            for (column, &v) in columns.iter_mut().zip(w.iter()) {
                column[k] = v;
            }
        }
        Ok(())
    };
    if n_tasks == 1 {
        return tasks.into_iter().enumerate().try_for_each(run);
    }
    tasks.into_par_iter().enumerate().try_for_each(run)
}

/// Item `i`'s `words.len()` limbs out of a structure-of-arrays batch of `n`
/// items.
pub fn gather(src: &[u32], n: usize, i: usize, words: &mut [u32]) {
    for (j, w) in words.iter_mut().enumerate() {
        *w = src[j * n + i];
    }
}

/// `item(i)` for every `i < n`, in order: on the calling thread for up to
/// [`TASK_ITEMS`] items, on rayon's global pool in tasks of that many
/// otherwise.
pub fn each<T: Send>(n: usize, item: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if n <= TASK_ITEMS {
        return (0..n).map(item).collect();
    }
    (0..n)
        .into_par_iter()
        .with_min_len(TASK_ITEMS)
        .map(item)
        .collect()
}

/// [`each`] for items that can fail.
///
/// # Errors
///
/// An error that an item returns.
pub fn map<T: Send, E: Send>(
    n: usize,
    item: impl Fn(usize) -> Result<T, E> + Sync + Send,
) -> Result<Vec<T>, E> {
    // Collected as plain results first: rayon collects an indexed iterator
    // straight into place, but a `Result<Vec<_>, _>` through a list of
    // pieces (measured: 0.055 against 0.045 µs a P-256 DER signature).
    each(n, item).into_iter().collect()
}

/// Item `i` of a structure-of-arrays batch as a big-endian byte string of
/// `words.len() * 4` bytes, the most significant limb first.
pub fn to_be_bytes(words: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 4);
    for w in words.iter().rev() {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// A big-endian byte string of at most `words.len() * 4` bytes as limbs,
/// least significant first (the rest of `words` is left as it is).
///
/// # Panics
///
/// If `bytes` is longer than `words` holds.
pub fn from_be_bytes(bytes: &[u8], words: &mut [u32]) {
    assert!(bytes.len() <= words.len() * 4, "{} bytes", bytes.len());
    let mut chunks = bytes.rchunks_exact(4);
    let mut j = 0;
    for c in chunks.by_ref() {
        words[j] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        j += 1;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        words[j] = rest.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::rsa_layout;

    fn items(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| (0..len).map(|j| (i * 131 + j * 7 + 3) as u8).collect())
            .collect()
    }

    /// The parallel path (several tasks) and the calling-thread path agree
    /// with the plain byte-wise layout, for item lengths that are not whole
    /// words and batch sizes on both sides of a task boundary.
    #[test]
    fn fill_and_map_agree_with_the_plain_layout() {
        for (n, len, limbs) in [
            (1, 256, 64),
            (7, 5, 2),
            (TASK_ITEMS, 33, 9),
            (TASK_ITEMS + 1, 256, 64),
            (3 * TASK_ITEMS + 17, 384, 96),
            (2 * TASK_ITEMS, 512, 128),
        ] {
            let src = items(n, len);
            let refs: Vec<&[u8]> = src.iter().map(Vec::as_slice).collect();
            let want = rsa_layout::to_soa(&refs, limbs);
            let mut got = vec![0xdead_beef; n * limbs];
            fill(&mut got, n, limbs, |i, w| {
                from_be_bytes(&src[i], w);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(got, want, "fill, n = {n}, {len} bytes in {limbs} limbs");
            let back = map(n, |i| {
                let mut w = vec![0u32; limbs];
                gather(&got, n, i, &mut w);
                Ok::<_, ()>(to_be_bytes(&w))
            })
            .unwrap();
            assert_eq!(back, rsa_layout::from_soa(&want, n, limbs), "map, n = {n}");
        }
    }

    #[test]
    fn an_item_error_stops_the_batch() {
        let n = 4 * TASK_ITEMS;
        let mut dst = vec![0u32; n * 4];
        let r = fill(
            &mut dst,
            n,
            4,
            |i, _| if i == 1234 { Err(i) } else { Ok(()) },
        );
        assert_eq!(r, Err(1234));
        let r = map(n, |i| if i == 77 { Err(i) } else { Ok(i) });
        assert_eq!(r, Err(77));
        assert_eq!(map(3, Ok::<_, ()>).unwrap(), vec![0, 1, 2]);
    }
}
