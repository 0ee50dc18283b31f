package criu

import "time"

// OnLazyStarted makes every lazy restore report its lazy-pages daemon's
// pid to f, until the returned func is called.
func OnLazyStarted(f func(pid int)) (undo func()) {
	lazyStarted = f
	return func() { lazyStarted = nil }
}

// DelayLazyKill holds back, by d, the kill of a container whose
// lazy-pages daemon failed.
func DelayLazyKill(d time.Duration) (undo func()) {
	lazyKillDelay = d
	return func() { lazyKillDelay = 0 }
}
