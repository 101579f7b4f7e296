package main

import (
	"strconv"
	"strings"
)

// targetList collects --target, repeated or comma-separated.
type targetList []string

func (t *targetList) String() string { return strings.Join(*t, ",") }

func (t *targetList) Set(v string) error {
	for _, a := range strings.Split(v, ",") {
		if a = strings.TrimSpace(a); a != "" {
			*t = append(*t, a)
		}
	}
	return nil
}

// optString is a string flag that knows whether it was given (an empty
// --token "" sends no token, overriding the environment).
type optString struct {
	value string
	set   bool
}

func (o *optString) String() string { return o.value }

func (o *optString) Set(v string) error {
	o.value, o.set = v, true
	return nil
}

// optUint32, optFloat32, optUint64: numeric flags that stay nil (the
// server's preset value) unless given.
type optUint32 struct{ p **uint32 }

func (o optUint32) String() string {
	if o.p == nil || *o.p == nil {
		return ""
	}
	return strconv.FormatUint(uint64(**o.p), 10)
}

func (o optUint32) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return err
	}
	u := uint32(n)
	*o.p = &u
	return nil
}

type optUint64 struct{ p **uint64 }

func (o optUint64) String() string {
	if o.p == nil || *o.p == nil {
		return ""
	}
	return strconv.FormatUint(**o.p, 10)
}

func (o optUint64) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return err
	}
	*o.p = &n
	return nil
}

type optFloat32 struct{ p **float32 }

func (o optFloat32) String() string {
	if o.p == nil || *o.p == nil {
		return ""
	}
	return strconv.FormatFloat(float64(**o.p), 'g', -1, 32)
}

func (o optFloat32) Set(v string) error {
	f, err := strconv.ParseFloat(v, 32)
	if err != nil {
		return err
	}
	g := float32(f)
	*o.p = &g
	return nil
}
