"""Training algorithms.  Each owns only its schedule and communication; they
share the kernels (:mod:`dbnet.kernels`), the update rules (:mod:`dbnet.optim`)
and the loop pieces (:mod:`dbnet.loop`)."""
