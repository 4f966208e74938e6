//! File data over objects. A file's bytes are cut into objects by its
//! layout (object `n` of inode `i` is named by [`ObjectId::name`]); a range
//! that spans objects is split and the pieces are sent concurrently. A
//! missing object, or the part of one past its end, is a hole and reads as
//! zeros. Errors from the cluster become errnos, never wrong bytes.

use std::sync::Arc;

use aspen_osd::client::{ClientError, ObjectClient, cut_file, ignore_missing, run_bounded};
use aspen_proto::ids::{ObjectId, ObjectNo};
use aspen_proto::layout::{FileLayout, MAX_FILE_SIZE, ObjectExtent};
use aspen_proto::osd::{MAX_WRITE_EXTENTS, OsdError};
use aspen_proto::{Errno, InodeId};
use bytes::Bytes;

use crate::writeback::SendingExtents;
use nix::libc::{SEEK_DATA, SEEK_HOLE};
/// How many objects a SEEK_DATA or SEEK_HOLE looks at before it answers
/// conservatively (data where it stopped, or a hole at the end of file).
pub const MAX_SEEK_OBJECTS: u64 = 4096;

/// The most bytes one vectored write of a write-back carries.
pub const MAX_WRITE_BATCH: u64 = 16 << 20;

/// Part of a buffered extent (the one at file offset `source`, from byte
/// `start`) that goes to object offset `at`.
struct Piece {
    source: u64,
    start: usize,
    len: u64,
    at: u64,
}

/// Pieces for one object, sent as one write.
struct Batch {
    objno: u64,
    pieces: Vec<Piece>,
    bytes: u64,
}

/// `extents` cut at object boundaries and grouped per object, in writes of
/// at most [`MAX_WRITE_EXTENTS`] pieces and [`MAX_WRITE_BATCH`] bytes.
fn batch_by_object(file: &FileObjects, extents: &SendingExtents) -> Result<Vec<Batch>, Errno> {
    let mut open: std::collections::BTreeMap<u64, Batch> = Default::default();
    let mut done = Vec::new();
    for (offset, bytes) in extents.iter() {
        for extent in file.extents(offset, bytes.len() as u64)? {
            let objno = extent.objno.0;
            let full = open.get(&objno).is_some_and(|batch| {
                batch.pieces.len() == MAX_WRITE_EXTENTS
                    || batch.bytes + extent.len > MAX_WRITE_BATCH
            });
            if full {
                done.extend(open.remove(&objno));
            }
            let batch = open.entry(objno).or_insert_with(|| Batch {
                objno,
                pieces: Vec::new(),
                bytes: 0,
            });
            batch.bytes += extent.len;
            batch.pieces.push(Piece {
                source: offset,
                start: (extent.file_offset - offset) as usize,
                len: extent.len,
                at: extent.offset,
            });
        }
    }
    done.extend(open.into_values());
    Ok(done)
}

/// Reads and writes file bytes as object operations.
#[derive(Clone)]
pub struct FileData {
    objects: Arc<ObjectClient>,
}

/// Where one file's objects are: its inode and layout.
#[derive(Clone, Copy, Debug)]
pub struct FileObjects {
    pub ino: InodeId,
    pub layout: FileLayout,
}

impl FileObjects {
    fn name(&self, objno: u64) -> Vec<u8> {
        ObjectId {
            pool: self.layout.pool(),
            ino: self.ino,
            objno: ObjectNo(objno),
        }
        .name()
        .into_bytes()
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<ObjectExtent>, Errno> {
        Ok(self
            .layout
            .extents(offset, len)
            .map_err(|_| Errno::EFBIG)?
            .collect())
    }
}

/// What a cluster failure means to the caller.
fn errno(error: ClientError) -> Errno {
    match error {
        ClientError::Osd(OsdError::NoSpace) => Errno::ENOSPC,
        ClientError::Osd(OsdError::Invalid(_)) => Errno::EINVAL,
        ClientError::Osd(OsdError::Fenced) => {
            tracing::error!("the OSDs refuse this client: its session was evicted");
            Errno::EIO
        }
        other => {
            tracing::warn!("object operation failed: {other}");
            Errno::EIO
        }
    }
}

/// The bytes an object holds for `extent`: fewer where the object is
/// short, none where it does not exist (both read as holes).
async fn read_extent(
    objects: &ObjectClient,
    file: &FileObjects,
    extent: ObjectExtent,
) -> Result<Vec<u8>, ClientError> {
    let name = file.name(extent.objno.0);
    match objects
        .read(file.layout.pool(), &name, extent.offset, extent.len)
        .await
    {
        Err(ClientError::Osd(OsdError::NotFound)) => Ok(Vec::new()),
        result => result,
    }
}

impl FileData {
    pub fn new(objects: Arc<ObjectClient>) -> FileData {
        FileData { objects }
    }

    /// The bytes `offset .. offset + len` of a file of `size` bytes (fewer
    /// at its end).
    pub async fn read(
        &self,
        file: FileObjects,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Result<Vec<u8>, Errno> {
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let extents = file.extents(offset, end - offset)?;
        if let [extent] = extents.as_slice() {
            let mut data = read_extent(&self.objects, &file, *extent)
                .await
                .map_err(errno)?;
            // A short or missing object reads as zeros to the end: a hole.
            data.resize((end - offset) as usize, 0);
            return Ok(data);
        }
        let mut bytes = vec![0u8; (end - offset) as usize];
        let reads = extents.into_iter().map(|extent| {
            let objects = self.objects.clone();
            async move { Ok((extent, read_extent(&objects, &file, extent).await?)) }
        });
        // A short or missing object leaves zeros: a hole.
        let place = |(extent, data): (ObjectExtent, Vec<u8>)| {
            let start = (extent.file_offset - offset) as usize;
            let len = data.len().min(extent.len as usize);
            bytes[start..start + len].copy_from_slice(&data[..len]);
            Ok(())
        };
        run_bounded(reads, place).await.map_err(errno)?;
        Ok(bytes)
    }

    /// Writes `data` at `offset`; returns once every object holds it durably.
    pub async fn write(&self, file: FileObjects, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let extents = file.extents(offset, data.len() as u64)?;
        // One copy, which every object's write slices.
        let data = Bytes::copy_from_slice(data);
        let pool = file.layout.pool();
        let writes = extents.into_iter().map(|extent| {
            let start = (extent.file_offset - offset) as usize;
            let piece = data.slice(start..start + extent.len as usize);
            let (objects, name) = (self.objects.clone(), file.name(extent.objno.0));
            async move { objects.write(pool, &name, extent.offset, piece).await }
        });
        run_bounded(writes, |_| Ok(())).await.map_err(errno)
    }

    /// Writes every extent of `extents`, all objects at once (bounded),
    /// the pieces of one object together in vectored writes; returns once
    /// every one is durable. A batch of one piece sends a slice of its
    /// extent, not a copy.
    pub async fn write_extents(
        &self,
        file: FileObjects,
        extents: Arc<SendingExtents>,
    ) -> Result<(), Errno> {
        let pool = file.layout.pool();
        let writes = batch_by_object(&file, &extents)?.into_iter().map(|batch| {
            let (objects, name) = (self.objects.clone(), file.name(batch.objno));
            let extents = extents.clone();
            async move {
                let source_of = |piece: &Piece| {
                    let bytes = extents
                        .get(piece.source)
                        .expect("listed from these extents");
                    (bytes, piece.start..piece.start + piece.len as usize)
                };
                if let [piece] = &batch.pieces[..] {
                    let (bytes, range) = source_of(piece);
                    return objects
                        .write(pool, &name, piece.at, bytes.slice(range))
                        .await;
                }
                let mut body = Vec::with_capacity(batch.bytes as usize);
                let mut list = Vec::with_capacity(batch.pieces.len());
                for piece in &batch.pieces {
                    let (bytes, range) = source_of(piece);
                    body.extend_from_slice(&bytes[range]);
                    list.push((piece.at, piece.len));
                }
                objects.write_extents(pool, &name, list, body.into()).await
            }
        });
        run_bounded(writes, |_| Ok(())).await.map_err(errno)
    }

    /// Cuts a file's data from `old_size` down to `new_size`: the object
    /// holding the new end is truncated, the ones past it deleted.
    pub async fn truncate(
        &self,
        file: FileObjects,
        new_size: u64,
        old_size: u64,
    ) -> Result<(), Errno> {
        cut_file(&self.objects, file.ino, file.layout, new_size, old_size)
            .await
            .map_err(errno)
    }

    /// Makes `offset .. offset + len` read as zeros (a punched hole): whole
    /// objects are deleted, partial ones zeroed.
    pub async fn zero(&self, file: FileObjects, offset: u64, len: u64) -> Result<(), Errno> {
        let object_size = file.layout.object_size();
        let pool = file.layout.pool();
        let zeroing = file.extents(offset, len)?.into_iter().map(|extent| {
            let (objects, name) = (self.objects.clone(), file.name(extent.objno.0));
            let whole = extent.offset == 0 && extent.len == object_size;
            async move {
                if whole {
                    ignore_missing(objects.delete(pool, &name).await)
                } else {
                    ignore_missing(objects.zero(pool, &name, extent.offset, extent.len).await)
                }
            }
        });
        run_bounded(zeroing, Ok).await.map_err(errno)
    }

    /// SEEK_DATA or SEEK_HOLE from `offset` in a file of `size` bytes, at
    /// object granularity (an object that exists is data).
    pub async fn seek(
        &self,
        file: FileObjects,
        offset: u64,
        size: u64,
        whence: i32,
    ) -> Result<u64, Errno> {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        if offset >= size {
            return Err(Errno::ENXIO);
        }
        let object_size = file.layout.object_size();
        let first = offset / object_size;
        let last = file.layout.objects_for_size(size);
        for objno in first..last.min(first + MAX_SEEK_OBJECTS) {
            let exists = self
                .objects
                .stat(file.layout.pool(), &file.name(objno))
                .await
                .map_err(errno)?
                .is_some();
            let start = (objno * object_size).max(offset);
            if exists == (whence == SEEK_DATA) {
                return Ok(start);
            }
        }
        match whence {
            // Past the objects looked at: say data here rather than skip any.
            SEEK_DATA if last > first + MAX_SEEK_OBJECTS => {
                Ok(((first + MAX_SEEK_OBJECTS) * object_size).max(offset))
            }
            SEEK_DATA => Err(Errno::ENXIO),
            _ => Ok(size),
        }
    }
}

/// The end of a write at `offset` of `len` bytes, or `EFBIG`.
pub fn write_end(offset: u64, len: u64) -> Result<u64, Errno> {
    offset
        .checked_add(len)
        .filter(|&end| end <= MAX_FILE_SIZE)
        .ok_or(Errno::EFBIG)
}
