package main

import (
	"math"
	"math/bits"
	"time"
)

// Latency histogram.
//
// latencyHist is a fixed-size, HDR-style histogram of durations in
// microseconds. Values below 2^histSubBits are counted exactly; above, each
// power-of-two range [2^e, 2^(e+1)) is split into 2^histSubBits equal
// buckets, so a reported percentile is within 1/64 (1.6%) of the true value.
// Values are counted up to 2^32 µs (about 71 minutes); larger ones fall in the
// top bucket. The exact minimum, maximum and sum are kept beside the buckets.
// It needs 14 KiB whatever the number of values.
const (
	histSubBits    = 6
	histSubBuckets = 1 << histSubBits
	histMaxBits    = 32
	histMaxValue   = 1<<histMaxBits - 1
	histBuckets    = (histMaxBits - histSubBits + 1) * histSubBuckets
)

type latencyHist struct {
	counts   [histBuckets]uint64
	count    uint64
	sum      time.Duration
	min, max time.Duration
}

// histIndex is the bucket of v (in µs, at most histMaxValue).
func histIndex(v uint64) int {
	if v < histSubBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - histSubBits
	return (shift+1)*histSubBuckets + int(v>>shift) - histSubBuckets
}

// histUpper is the largest value (in µs) that falls in bucket i.
func histUpper(i int) uint64 {
	if i < 2*histSubBuckets {
		return uint64(i)
	}
	shift := i/histSubBuckets - 1
	sub := uint64(i%histSubBuckets + histSubBuckets)
	return (sub+1)<<shift - 1
}

func (h *latencyHist) record(d time.Duration) {
	d = max(d, 0)
	us := min(uint64(d/time.Microsecond), histMaxValue)
	h.counts[histIndex(us)]++
	if h.count == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.count++
	h.sum += d
}

func (h *latencyHist) merge(o *latencyHist) {
	if o.count == 0 {
		return
	}
	for i, n := range o.counts {
		h.counts[i] += n
	}
	if h.count == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.count += o.count
	h.sum += o.sum
}

func (h *latencyHist) mean() time.Duration {
	if h.count == 0 {
		return 0
	}
	return h.sum / time.Duration(h.count)
}

// percentile returns the value below or at which p percent of the recorded
// values fall: the upper edge of the bucket holding that rank, clamped to
// the exact minimum and maximum; the top rank is the exact maximum. It is 0
// for an empty histogram.
func (h *latencyHist) percentile(p float64) time.Duration {
	if h.count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(h.count)))
	rank = min(max(rank, 1), h.count)
	if rank == h.count {
		return h.max
	}
	var seen uint64
	for i, n := range h.counts {
		seen += n
		if seen >= rank {
			v := time.Duration(histUpper(i)) * time.Microsecond
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}
