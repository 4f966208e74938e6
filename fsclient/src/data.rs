//! File data over objects. A file's bytes are cut into objects by its
//! layout (object `n` of inode `i` is named by [`ObjectId::name`]); a range
//! that spans objects is split and the pieces are sent concurrently. A
//! missing object, or the part of one past its end, is a hole and reads as
//! zeros. Errors from the cluster become errnos, never wrong bytes.

use std::sync::Arc;

use aspen_osd::client::{ClientError, ObjectClient};
use aspen_proto::fs::Timestamp;
use aspen_proto::ids::{ObjectId, ObjectNo};
use aspen_proto::layout::{FileLayout, MAX_FILE_SIZE, ObjectExtent};
use aspen_proto::osd::OsdError;
use aspen_proto::{Errno, InodeId};
use tokio::task::JoinSet;

/// The most object operations one file operation keeps in flight.
pub const MAX_IN_FLIGHT: usize = 32;
/// How many objects a SEEK_DATA or SEEK_HOLE looks at before it answers
/// conservatively (data where it stopped, or a hole at the end of file).
pub const MAX_SEEK_OBJECTS: u64 = 4096;

/// `lseek` whence values that look at the file's contents.
pub const SEEK_DATA: i32 = 3;
pub const SEEK_HOLE: i32 = 4;

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
        ClientError::Osd(OsdError::Io(problem)) if problem.contains("space") => Errno::ENOSPC,
        ClientError::Osd(OsdError::Invalid(_)) => Errno::EINVAL,
        other => {
            tracing::warn!("object operation failed: {other}");
            Errno::EIO
        }
    }
}

impl FileData {
    pub fn new(objects: Arc<ObjectClient>) -> FileData {
        FileData { objects }
    }

    pub fn objects(&self) -> &Arc<ObjectClient> {
        &self.objects
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
        let mut bytes = vec![0u8; (end - offset) as usize];
        let mut tasks = JoinSet::new();
        for (index, extent) in extents.iter().enumerate() {
            let objects = self.objects.clone();
            let name = file.name(extent.objno.0);
            let (at, len) = (extent.offset, extent.len);
            let pool = file.layout.pool();
            tasks.spawn(async move { (index, objects.read(pool, &name, at, len).await) });
            if tasks.len() >= MAX_IN_FLIGHT {
                place(&mut bytes, &extents, offset, tasks.join_next().await)?;
            }
        }
        while let Some(done) = tasks.join_next().await {
            place(&mut bytes, &extents, offset, Some(done))?;
        }
        Ok(bytes)
    }

    /// Writes `data` at `offset`; returns once every object holds it durably.
    pub async fn write(&self, file: FileObjects, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let extents = file.extents(offset, data.len() as u64)?;
        if let [extent] = extents.as_slice() {
            let name = file.name(extent.objno.0);
            return self
                .objects
                .write(file.layout.pool(), &name, extent.offset, data)
                .await
                .map(drop)
                .map_err(errno);
        }
        let pool = file.layout.pool();
        run_bounded(extents.into_iter().map(|extent| {
            let start = (extent.file_offset - offset) as usize;
            let piece = data[start..start + extent.len as usize].to_vec();
            let (objects, name) = (self.objects.clone(), file.name(extent.objno.0));
            async move {
                objects
                    .write(pool, &name, extent.offset, &piece)
                    .await
                    .map(drop)
            }
        }))
        .await
    }

    /// Cuts a file's data from `old_size` down to `new_size`: the object
    /// holding the new end is truncated, the ones past it deleted.
    pub async fn truncate(
        &self,
        file: FileObjects,
        new_size: u64,
        old_size: u64,
    ) -> Result<(), Errno> {
        if new_size >= old_size {
            return Ok(());
        }
        let object_size = file.layout.object_size();
        let mut first_deleted = new_size / object_size;
        if !new_size.is_multiple_of(object_size) {
            let name = file.name(first_deleted);
            let cut = self
                .objects
                .truncate(file.layout.pool(), &name, new_size % object_size)
                .await;
            ignore_missing(cut).map_err(errno)?;
            first_deleted += 1;
        }
        self.delete_objects(file, first_deleted..file.layout.objects_for_size(old_size))
            .await
    }

    /// Deletes objects `range` of a file (missing ones are fine).
    pub async fn delete_objects(
        &self,
        file: FileObjects,
        range: std::ops::Range<u64>,
    ) -> Result<(), Errno> {
        let pool = file.layout.pool();
        run_bounded(range.map(|objno| {
            let (objects, name) = (self.objects.clone(), file.name(objno));
            async move { ignore_missing(objects.delete(pool, &name).await) }
        }))
        .await
    }

    /// Makes `offset .. offset + len` read as zeros (a punched hole): whole
    /// objects are deleted, partial ones zeroed.
    pub async fn zero(&self, file: FileObjects, offset: u64, len: u64) -> Result<(), Errno> {
        let object_size = file.layout.object_size();
        let pool = file.layout.pool();
        run_bounded(file.extents(offset, len)?.into_iter().map(|extent| {
            let (objects, name) = (self.objects.clone(), file.name(extent.objno.0));
            let whole = extent.offset == 0 && extent.len == object_size;
            async move {
                if whole {
                    ignore_missing(objects.delete(pool, &name).await)
                } else {
                    ignore_missing(objects.zero(pool, &name, extent.offset, extent.len).await)
                }
            }
        }))
        .await
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
            match whence {
                SEEK_DATA if exists => return Ok(start),
                SEEK_HOLE if !exists => return Ok(start),
                SEEK_DATA | SEEK_HOLE => {}
                _ => return Err(Errno::EINVAL),
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

type ReadDone = Result<(usize, Result<Vec<u8>, ClientError>), tokio::task::JoinError>;

/// Copies one finished object read into its place in `bytes`.
fn place(
    bytes: &mut [u8],
    extents: &[ObjectExtent],
    offset: u64,
    done: Option<ReadDone>,
) -> Result<(), Errno> {
    let Some(done) = done else { return Ok(()) };
    let (index, result) = done.map_err(|_| Errno::EIO)?;
    let data = match result {
        Ok(data) => data,
        Err(ClientError::Osd(OsdError::NotFound)) => return Ok(()),
        Err(error) => return Err(errno(error)),
    };
    let extent = extents[index];
    let start = (extent.file_offset - offset) as usize;
    let len = data.len().min(extent.len as usize);
    bytes[start..start + len].copy_from_slice(&data[..len]);
    Ok(())
}

/// Runs `ops` with at most [`MAX_IN_FLIGHT`] at once; the first failure
/// is the answer.
async fn run_bounded<F>(ops: impl IntoIterator<Item = F>) -> Result<(), Errno>
where
    F: std::future::Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let finished = |done: Result<Result<(), ClientError>, tokio::task::JoinError>| match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(errno(error)),
        Err(_) => Err(Errno::EIO),
    };
    for op in ops {
        tasks.spawn(op);
        if tasks.len() >= MAX_IN_FLIGHT
            && let Some(done) = tasks.join_next().await
        {
            finished(done)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        finished(done)?;
    }
    Ok(())
}

/// A missing object is already what a delete, truncate or zero wants.
fn ignore_missing<T>(result: Result<T, ClientError>) -> Result<(), ClientError> {
    match result {
        Ok(_) | Err(ClientError::Osd(OsdError::NotFound)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The end of a write at `offset` of `len` bytes, or `EFBIG`.
pub fn write_end(offset: u64, len: u64) -> Result<u64, Errno> {
    offset
        .checked_add(len)
        .filter(|&end| end <= MAX_FILE_SIZE)
        .ok_or(Errno::EFBIG)
}

/// Now, for attributes the client changes before the MDS hears of them.
pub fn now() -> Timestamp {
    Timestamp::now()
}
