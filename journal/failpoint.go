package journal

import (
	"os"
	"syscall"
)

// FailpointEnv names the point at which Failpoint kills the process.
const FailpointEnv = "CKPT_FAILPOINT"

var failpoint = os.Getenv(FailpointEnv)

// Failpoint kills the process with SIGKILL, as a crash or kill -9 would,
// when CKPT_FAILPOINT names this point: the fault-injection tests stop
// ckpt at chosen moments of a suspend or a resume (freeze:one, dump:done,
// seal:done, restore:one, …) and check that nothing is lost. Unset, it
// costs a string compare.
func Failpoint(name string) {
	if failpoint != "" && failpoint == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
