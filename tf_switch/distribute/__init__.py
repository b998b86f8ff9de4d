"""Training across devices and machines with `tf.distribute`."""
