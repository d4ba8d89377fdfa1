"""How a model file sits in memory: its mapped pages and how many are 2 MiB pages, and a way to read it
back into the page cache as 2 MiB folios (Linux; elsewhere the figures are zero and nothing changes).

A decode step reads every weight once, so the size of the pages under the map matters. The runtime's map
asks for 2 MiB pages (quant/file_map.py), which a file gets when it is read from disk; a file cached in
small folios (written in small pieces, or read without the advice) keeps them until evicted.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class MappedPages:
    resident_bytes: int  # this process's resident pages of the file, over all its maps of it
    huge_bytes: int  # of those, mapped as 2 MiB pages (smaps' FilePmdMapped)


def mapped_pages(path: str | os.PathLike[str]) -> MappedPages:
    """This process's resident and 2 MiB-mapped bytes of `path`, from /proc/self/smaps."""
    target = os.path.realpath(path)
    resident = huge = 0
    inside = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split()
                if fields and not fields[0].endswith(":"):  # "start-end perms offset dev inode [path]"
                    inside = len(fields) >= 6 and " ".join(fields[5:]) == target
                elif inside and fields and fields[0] in ("Rss:", "FilePmdMapped:"):
                    kib = int(fields[1]) * 1024
                    if fields[0] == "Rss:":
                        resident += kib
                    else:
                        huge += kib
    except OSError:  # no /proc
        return MappedPages(0, 0)
    return MappedPages(resident, huge)


def recache_huge(path: str | os.PathLike[str]) -> float:
    """Evict `path` from the page cache and read it back through a MADV_HUGEPAGE map; returns the share
    of the file then mapped as 2 MiB pages (0.0 where the kernel or filesystem cannot; counted over all of
    this process's maps of the file). Pages other processes hold mapped stay as they are. OSError as
    os.open raises it."""
    if not hasattr(os, "posix_fadvise"):  # not Linux: nothing to do
        return 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0.0
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as m:
            if hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    m.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            view = memoryview(m)
            try:
                for offset in range(0, size, mmap.PAGESIZE):  # one byte per page faults it in
                    view[offset]
                share = mapped_pages(path).huge_bytes / size
            finally:
                view.release()
        return share
    finally:
        os.close(fd)
