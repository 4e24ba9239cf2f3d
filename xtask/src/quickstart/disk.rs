//! The demo disk images: raw disks with a DOS (MBR) partition table, made in
//! memory so that the quick start needs no qemu-img. The import's format
//! inspector recognises the table and checks it, as it would on a real disk.

/// Bytes in a sector.
const SECTOR: usize = 512;
/// The partition starts at 1 MiB, as partitioning tools align it.
const FIRST_LBA: u32 = 2048;

/// A raw disk of `size` bytes (a multiple of 512, above 1 MiB) with one
/// bootable Linux partition from 1 MiB to the end, filled with bytes derived
/// from `seed` so that every disk has its own checksum.
pub fn raw_mbr_disk(size: usize, seed: u64) -> Vec<u8> {
    assert!(
        size.is_multiple_of(SECTOR) && size > FIRST_LBA as usize * SECTOR,
        "disk size {size} must be a multiple of {SECTOR} above 1 MiB"
    );
    let mut disk = pseudo_random(size, seed);
    let mbr = &mut disk[..SECTOR];
    mbr.fill(0);
    let banner = b"imaged quick start demo disk";
    mbr[..banner.len()].copy_from_slice(banner);
    // Disk signature, as fdisk writes one.
    mbr[440..444].copy_from_slice(&(seed as u32 | 1).to_le_bytes());
    let sectors = (size / SECTOR) as u32 - FIRST_LBA;
    let entry = &mut mbr[446..462];
    entry[0] = 0x80; // bootable
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS unused: LBA addressing
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&FIRST_LBA.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    // The gap between the table and the partition is zero, as on real disks.
    disk[SECTOR..FIRST_LBA as usize * SECTOR].fill(0);
    disk
}

/// Deterministic bytes (xorshift): incompressible, and no accidental magic
/// number of another format at the offsets the inspector reads.
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_has_one_bootable_partition_spanning_it() {
        let d = raw_mbr_disk(2 << 20, 7);
        assert_eq!(d.len(), 2 << 20);
        assert_eq!(&d[510..512], &[0x55, 0xaa]);
        assert_eq!(d[446], 0x80);
        assert_eq!(d[446 + 4], 0x83);
        let start = u32::from_le_bytes(d[454..458].try_into().unwrap());
        let count = u32::from_le_bytes(d[458..462].try_into().unwrap());
        assert_eq!((start, start + count), (2048, 4096));
        // The other three entries are empty.
        assert!(d[462..510].iter().all(|&b| b == 0));
        // Content differs per seed; the same seed gives the same disk.
        assert_ne!(d, raw_mbr_disk(2 << 20, 8));
        assert_eq!(d, raw_mbr_disk(2 << 20, 7));
        assert!(d[1 << 20..].iter().any(|&b| b != 0));
    }
}
