/* tensorpool.h: what libtensorpool.so offers beyond the C allocation functions.
 *
 * The library replaces malloc, free, calloc, realloc, reallocarray,
 * posix_memalign, aligned_alloc, memalign, valloc, pvalloc, malloc_usable_size,
 * malloc_trim, mallinfo2, mallopt, malloc_stats, free_sized and
 * free_aligned_sized, with their C and glibc semantics, when it is preloaded
 * (LD_PRELOAD, or `tensorpool run`) or linked (-ltensorpool). These functions
 * exist only in it: a program that calls them links it, or finds them with
 * dlsym(RTLD_DEFAULT, "tensorpool_stats_json") to run with or without it.
 *
 * Strings are returned in blocks of malloc's: free() them.
 */
#ifndef TENSORPOOL_H
#define TENSORPOOL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The allocator's statistics as one JSON object (allocated_bytes,
 * reserved_bytes, resident_bytes, their peaks, num_allocs, num_frees, ...);
 * NULL if the allocator does not run. */
char *tensorpool_stats_json(void);

/* The allocator's summary, for people: the tiers, the size classes. */
char *tensorpool_summary(void);

/* Gives every thread's free memory back to the system now; returns the bytes. */
size_t tensorpool_trim(void);

/* Writes out what the recording (TENSORPOOL_RECORD=file.csv) holds so far:
 * 0, or -1 if writing failed (the reason is printed on stderr). */
int tensorpool_flush_recording(void);

#ifdef __cplusplus
}
#endif

#endif /* TENSORPOOL_H */
