// Package duration is the time.Duration of Coffer's JSON config files:
// written and read as Go duration strings ("250ms", "10s", "1h30m"), never
// as bare numbers of nanoseconds.
package duration

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration that reads and writes JSON as a string.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String is time.Duration's form, e.g. "250ms".
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string ("250ms"); a number is refused
// with a message that shows the string form.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n float64
		if json.Unmarshal(b, &n) == nil {
			return fmt.Errorf("durations are strings with a unit, like \"250ms\" or \"10s\", not numbers (%s would be %q in nanoseconds)", b, time.Duration(n).String())
		}
		return fmt.Errorf("duration: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}
