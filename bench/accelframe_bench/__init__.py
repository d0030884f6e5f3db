"""accelframe's benchmarks and measuring tools: ``accelframe bench overhead|wan|world|step|block|stream``
and ``accelframe calibrate``, their reports and charts."""
