//! Validation of the segment files at open: every frame is decoded; a torn
//! tail is cut; damage before the tail stops the open (or, in repair mode, is
//! cut and moved aside); damage in records the owner has already applied is
//! stepped over.
//!
//! ## Damage in applied records
//! The owner passes one more than the highest LSN it has applied
//! ([`crate::WalOptions::lsn_floor`], here `applied_below`). Records below it
//! are never replayed again, so damage that lies wholly below it loses
//! nothing: it is logged with segment and offset, reported in
//! [`OpenReport::applied_damage`], and decoding resumes at the next valid
//! record. Where it resumes is found in this order:
//! 1. right after the damaged frame, if its length field still leads to a
//!    valid frame with the next LSN (one flipped bit anywhere but the length);
//! 2. at the first valid frame further on whose LSN is between the damaged
//!    one and `applied_below` and that is followed by the next record or by
//!    nothing written (a frame carried inside a payload is not mistaken for
//!    the log);
//! 3. at the next segment, if nothing valid follows in this one and the next
//!    segment holding records starts at or below `applied_below`.
//!
//! Damage that reaches a record at or above `applied_below` is handled as it
//! always was: a torn tail when nothing valid follows it, otherwise
//! [`WalError::Corrupt`] unless repair mode is on.
//!
//! ## Torn tails and group commit
//! The frame format does not mark where one group commit ends, so "the last
//! group written before a crash" cannot be told apart from older groups by
//! reading the log. What bounds it is the writer: it writes one group with
//! one `pwrite`, then `fdatasync`s it before taking the next, so with
//! `Durability::Always` at most the last group is unsynced (and
//! unacknowledged) at a crash. A process crash keeps the page cache, so that
//! group is on disk as a prefix of its bytes: damage with nothing valid after
//! it, which is what a torn tail is here. Only a machine crash that persists
//! pages of that last `pwrite` out of order can leave valid frames of it
//! after a hole; that is indistinguishable from a lost write in an older,
//! acknowledged group, so it stops the open (repair then cuts it, losing only
//! the unacknowledged group).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::WalError;
use crate::error::IoContext;
use crate::frame::{self, Frame, FrameError, HEADER_LEN, READ_PAYLOAD_LIMIT};
use crate::log::{AppliedDamage, CORRUPT_DIR, OpenReport, Truncation};
use crate::segment::{self, SegmentFile};

/// A stretch of damaged or missing records below the applied LSN that
/// replay steps over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skip {
    /// Segment where decoding fails.
    pub segment: PathBuf,
    /// Offset where decoding fails.
    pub offset: usize,
    /// Offset in the same segment where decoding resumes; `None`: at the
    /// start of the next segment.
    pub resume: Option<usize>,
    /// LSN expected where decoding fails (the first unreadable one).
    pub first_lsn: u64,
    /// LSN of the record decoding resumes with.
    pub resume_lsn: u64,
    /// What is wrong with the bytes there.
    pub reason: String,
}

/// What [`scan`] found.
pub(crate) struct Scanned {
    /// Segments that hold records, in LSN order.
    pub segments: Vec<SegmentFile>,
    pub report: OpenReport,
    /// The lowest LSN the next record may take according to the names of
    /// removed empty segments (records before them may all have been released).
    pub named_floor: u64,
    /// Damage below the applied LSN, for replay to step over.
    pub skips: Vec<Skip>,
}

/// Damage that stopped the decoding of a segment.
struct Damage {
    offset: usize,
    /// LSN the damaged bytes should have held.
    lsn: u64,
    reason: String,
    /// Below the applied LSN with nothing valid after it in this segment:
    /// harmless if the next segment holding records starts at or below the
    /// applied LSN.
    applied: bool,
}

/// Outcome of decoding a segment from its start.
struct SegmentScan {
    records: u64,
    /// Offset just past the last valid record.
    end: usize,
    /// Why decoding stopped at `end`, unless the rest is clean (all zero).
    damage: Option<Damage>,
    last_lsn: Option<u64>,
    /// Damage below the applied LSN inside this segment that decoding stepped over.
    skips: Vec<Skip>,
}

/// Where decoding can go on after damage in an applied record.
enum Resync {
    /// A valid record with an LSN between the damaged one and the applied
    /// LSN starts at `offset`.
    At { offset: usize, lsn: u64 },
    /// Nothing valid follows in this segment.
    ToEnd,
    /// A record the owner has not applied lies in the damage, or a frame of a
    /// newer format follows it.
    Lost,
}

fn scan_segment(
    data: &[u8],
    first_lsn: u64,
    applied_below: u64,
    path: &Path,
) -> Result<SegmentScan, WalError> {
    let mut pos = 0usize;
    let mut next = first_lsn;
    let mut records = 0;
    let mut last_lsn = None;
    let mut skips = Vec::new();
    let damage = loop {
        if pos >= data.len() {
            break None;
        }
        let reason = match frame::decode(&data[pos..], READ_PAYLOAD_LIMIT) {
            Ok(f) if f.lsn == next => {
                pos += f.encoded_len();
                last_lsn = Some(next);
                next += 1;
                records += 1;
                continue;
            }
            Ok(f) => format!("LSN {} where {next} was expected", f.lsn),
            Err(FrameError::Unsupported { version, flags }) => {
                return Err(WalError::Unsupported {
                    segment: path.to_path_buf(),
                    offset: pos as u64,
                    reason: FrameError::Unsupported { version, flags }.to_string(),
                });
            }
            Err(e) => {
                if data[pos..].iter().all(|b| *b == 0) {
                    break None;
                }
                e.to_string()
            }
        };
        if next >= applied_below {
            break Some(Damage {
                offset: pos,
                lsn: next,
                reason,
                applied: false,
            });
        }
        match resync(data, pos, next, applied_below) {
            Resync::At { offset, lsn } => {
                skips.push(Skip {
                    segment: path.to_path_buf(),
                    offset: pos,
                    resume: Some(offset),
                    first_lsn: next,
                    resume_lsn: lsn,
                    reason,
                });
                pos = offset;
                next = lsn;
            }
            Resync::ToEnd => {
                break Some(Damage {
                    offset: pos,
                    lsn: next,
                    reason,
                    applied: true,
                });
            }
            Resync::Lost => {
                break Some(Damage {
                    offset: pos,
                    lsn: next,
                    reason,
                    applied: false,
                });
            }
        }
    };
    let end = damage.as_ref().map_or(pos, |d| d.offset);
    Ok(SegmentScan {
        records,
        end,
        damage,
        last_lsn,
        skips,
    })
}

/// Finds where decoding can resume after damage at `pos`, where the record
/// with LSN `lsn` (below `applied_below`) should have been.
fn resync(data: &[u8], pos: usize, lsn: u64, applied_below: u64) -> Resync {
    // Most damage spares the length field: the next record then starts
    // right after the damaged one.
    let implied = data
        .get(pos + 8..pos + 12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .and_then(|len| usize::try_from(len).ok())
        .and_then(|len| len.checked_add(pos + HEADER_LEN));
    if let Some(at) = implied {
        let next_follows = data.get(at..).is_some_and(|rest| {
            frame::decode(rest, READ_PAYLOAD_LIMIT).is_ok_and(|f| f.lsn == lsn + 1)
        });
        if next_follows {
            return Resync::At {
                offset: at,
                lsn: lsn + 1,
            };
        }
    }
    // Otherwise the first valid frame that continues the log. LSNs beyond
    // what the remaining bytes could hold are frames carried in a payload.
    let most = lsn + 1 + ((data.len() - pos) / HEADER_LEN) as u64;
    let mut from = pos + 1;
    while let Some(at) = frame::find_valid_frame(data, from, READ_PAYLOAD_LIMIT) {
        match frame::decode(&data[at..], READ_PAYLOAD_LIMIT) {
            Ok(f)
                if f.lsn >= lsn
                    && f.lsn <= applied_below
                    && continues(data, at + f.encoded_len(), f.lsn) =>
            {
                return Resync::At {
                    offset: at,
                    lsn: f.lsn,
                };
            }
            Ok(f) if f.lsn > applied_below && f.lsn <= most => return Resync::Lost,
            Err(FrameError::Unsupported { .. }) => return Resync::Lost,
            _ => from = at + 1,
        }
    }
    Resync::ToEnd
}

/// `true` when the bytes at `end` continue a log whose last record is `lsn`:
/// the next record, or nothing written (end of file or zeros).
fn continues(data: &[u8], end: usize, lsn: u64) -> bool {
    data.get(end..).is_some_and(|rest| {
        rest.iter().all(|b| *b == 0)
            || frame::decode(rest, READ_PAYLOAD_LIMIT).is_ok_and(|g| g.lsn == lsn + 1)
    })
}

/// Logs damage below the applied LSN and adds it to the report.
fn note_applied_damage(report: &mut OpenReport, damage: AppliedDamage) {
    tracing::warn!(
        segment = %damage.segment.display(),
        offset = damage.offset,
        first_lsn = damage.first_lsn,
        resume_lsn = damage.resume_lsn,
        reason = %damage.reason,
        "WAL damage in records the store has already applied: skipped (they are not needed; \
         retention removes them)"
    );
    report.applied_damage.push(damage);
}

fn reported(skip: &Skip) -> AppliedDamage {
    AppliedDamage {
        segment: skip.segment.clone(),
        offset: skip.offset as u64,
        first_lsn: skip.first_lsn,
        resume_lsn: skip.resume_lsn,
        reason: skip.reason.clone(),
    }
}

/// Validates the log directory, truncating a torn tail or (in repair mode)
/// damage before it, and stepping over damage below `applied_below` (one
/// more than the highest LSN the owner has applied; 0 or 1: none).
pub(crate) fn scan(dir: &Path, repair: bool, applied_below: u64) -> Result<Scanned, WalError> {
    let files = segment::list(dir)?;
    let mut report = OpenReport::default();
    let mut kept: Vec<SegmentFile> = Vec::new();
    let mut skips: Vec<Skip> = Vec::new();
    // The LSN the next segment holding records must start with, and where
    // the records of the last kept segment end.
    let mut expected: Option<u64> = None;
    let mut kept_end: usize = 0;
    // Damage below the applied LSN that runs to the end of its segment,
    // settled by the next segment that holds records.
    let mut pending: Option<(usize, Damage)> = None;
    let mut cut: Option<(usize, usize, String)> = None;

    for (i, seg) in files.iter().enumerate() {
        let data = fs::read(&seg.path).at(&seg.path)?;
        let s = scan_segment(&data, seg.first_lsn, applied_below, &seg.path)?;
        if s.records > 0 {
            let missing_from = expected.or_else(|| pending.as_ref().map(|(_, d)| d.lsn));
            if let Some(from) = missing_from {
                let continuous = seg.first_lsn == from && pending.is_none();
                // Records from `from` to this segment's first are missing or
                // damaged: harmless when all of them are applied.
                let applied = seg.first_lsn >= from && seg.first_lsn <= applied_below;
                if !continuous && !applied {
                    // Unapplied records are missing: if applied damage ran to
                    // the end of an earlier segment, that is where the log is
                    // damaged (a torn tail, or corrupt with valid records after).
                    if seg.first_lsn > from {
                        if let Some((idx, d)) = pending.take() {
                            cut = Some((idx, d.offset, d.reason));
                            break;
                        }
                    }
                    return Err(WalError::Gap {
                        expected: from,
                        found: seg.first_lsn,
                        segment: seg.path.clone(),
                    });
                }
                if !continuous {
                    let (segment, offset, reason) = match pending.take() {
                        Some((idx, d)) => (files[idx].path.clone(), d.offset, d.reason),
                        None => (
                            seg.path.clone(),
                            0,
                            format!(
                                "records {from} to {} are missing (this segment starts at {})",
                                seg.first_lsn - 1,
                                seg.first_lsn
                            ),
                        ),
                    };
                    note_applied_damage(
                        &mut report,
                        AppliedDamage {
                            segment,
                            offset: offset as u64,
                            first_lsn: from,
                            resume_lsn: seg.first_lsn,
                            reason: reason.clone(),
                        },
                    );
                    // Replay leaves the last kept segment where its records
                    // end and goes on with this one.
                    if let Some(last) = kept.last() {
                        skips.push(Skip {
                            segment: last.path.clone(),
                            offset: kept_end,
                            resume: None,
                            first_lsn: from,
                            resume_lsn: seg.first_lsn,
                            reason,
                        });
                    }
                }
            }
            report.records += s.records;
            report.last_lsn = s.last_lsn.unwrap_or(report.last_lsn);
            report.first_lsn.get_or_insert(seg.first_lsn);
            expected = s.last_lsn.map(|l| l + 1);
            kept.push(seg.clone());
            kept_end = s.end;
        }
        for skip in &s.skips {
            note_applied_damage(&mut report, reported(skip));
        }
        skips.extend(s.skips);
        if let Some(d) = s.damage {
            if !d.applied {
                // Damage that reaches unapplied records; if applied damage
                // ran up to it from an earlier segment, the cut starts there.
                cut = Some(match pending.take() {
                    Some((idx, p)) => (idx, p.offset, p.reason),
                    None => (i, d.offset, d.reason),
                });
                break;
            }
            if pending.is_none() {
                pending = Some((i, d));
            }
        }
    }
    // Applied damage with nothing valid after it: a torn tail like any other.
    if cut.is_none() {
        cut = pending.take().map(|(idx, d)| (idx, d.offset, d.reason));
    }

    let Some((idx, offset, reason)) = cut else {
        // Clean: drop segments without records (the active segment of a run
        // that wrote nothing, or that was left alone by retention).
        let mut floor = 0;
        for seg in files.iter().filter(|f| !kept.contains(f)) {
            floor = floor.max(seg.first_lsn);
            fs::remove_file(&seg.path).at(&seg.path)?;
        }
        report.segments = kept.len();
        return Ok(Scanned {
            segments: kept,
            report,
            named_floor: floor,
            skips,
        });
    };

    // Is anything valid after the damage? Only frames that could plausibly
    // continue this log count (an LSN above the last valid one), so a record
    // that happens to carry an encoded frame in its payload is not mistaken
    // for live data.
    let last = report.last_lsn;
    let plausible = |f: &Frame<'_>, remaining: usize| {
        f.lsn > last && f.lsn <= last + 1 + (remaining / HEADER_LEN) as u64
    };
    let mut remaining: usize = 0;
    let mut datas = Vec::new();
    for seg in &files[idx..] {
        let d = fs::read(&seg.path).at(&seg.path)?;
        remaining += d.len();
        datas.push(d);
    }
    remaining -= offset;
    let valid_after = datas.iter().enumerate().any(|(j, d)| {
        let from = if j == 0 { offset + 1 } else { 0 };
        find_plausible(d, from, |f| plausible(f, remaining))
    });
    let removed_bytes: u64 = datas
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let from = if j == 0 { offset } else { 0 };
            d[from.min(d.len())..].iter().filter(|b| **b != 0).count() as u64
        })
        .sum();
    let damaged = &files[idx];

    if valid_after && !repair {
        return Err(WalError::Corrupt {
            segment: damaged.path.clone(),
            offset: offset as u64,
            reason,
        });
    }

    let moved_to = if valid_after {
        let corrupt = dir.join(CORRUPT_DIR);
        fs::create_dir_all(&corrupt).at(&corrupt)?;
        let name = damaged
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = corrupt.join(format!("{name}.from-{offset}"));
        fs::write(&target, &datas[0][offset..]).at(&target)?;
        File::open(&target).and_then(|f| f.sync_all()).at(&target)?;
        for seg in &files[idx + 1..] {
            let name = seg
                .path
                .file_name()
                .map(|n| n.to_owned())
                .unwrap_or_default();
            let moved = corrupt.join(name);
            fs::rename(&seg.path, &moved).at(&seg.path)?;
            stamp_now(&moved)?;
        }
        segment::sync_dir(&corrupt)?;
        tracing::error!(
            segment = %damaged.path.display(), offset, reason = %reason,
            moved_to = %target.display(),
            "WAL repair: damage before the tail; truncated there and moved the remainder aside"
        );
        Some(target)
    } else {
        for seg in &files[idx + 1..] {
            fs::remove_file(&seg.path).at(&seg.path)?;
        }
        tracing::warn!(
            segment = %damaged.path.display(), offset, reason = %reason, bytes = removed_bytes,
            "WAL torn tail truncated"
        );
        None
    };
    segment::truncate(&damaged.path, offset as u64)?;
    if !kept.contains(damaged) {
        fs::remove_file(&damaged.path).at(&damaged.path)?;
    }
    // Segments before the damaged one that hold no record are stale leftovers.
    for seg in files[..idx].iter().filter(|f| !kept.contains(f)) {
        fs::remove_file(&seg.path).at(&seg.path)?;
    }
    segment::sync_dir(dir)?;
    // Nothing to step over in what was cut or removed.
    skips.retain(|s| {
        kept.iter().any(|k| k.path == s.segment) && (s.segment != damaged.path || s.offset < offset)
    });
    let truncation = Truncation {
        segment: damaged.path.clone(),
        offset: offset as u64,
        reason,
        bytes: removed_bytes,
        moved_to: moved_to.clone(),
    };
    if moved_to.is_some() {
        report.repaired = Some(truncation);
    } else {
        report.torn_tail = Some(truncation);
    }
    report.segments = kept.len();
    Ok(Scanned {
        segments: kept,
        report,
        named_floor: 0,
        skips,
    })
}

/// Sets a quarantined file's modification time to now: its retention
/// (`corrupt_retention_hours`) counts from the repair, not from when the
/// segment was last written.
fn stamp_now(path: &Path) -> Result<(), WalError> {
    let f = fs::OpenOptions::new().write(true).open(path).at(path)?;
    f.set_modified(std::time::SystemTime::now()).at(path)
}

fn find_plausible(data: &[u8], mut from: usize, accept: impl Fn(&Frame<'_>) -> bool) -> bool {
    while let Some(at) = frame::find_valid_frame(data, from, READ_PAYLOAD_LIMIT) {
        match frame::decode(&data[at..], READ_PAYLOAD_LIMIT) {
            Ok(f) if accept(&f) => return true,
            Err(FrameError::Unsupported { .. }) => return true,
            _ => from = at + 1,
        }
    }
    false
}
