iopt: --format NAME is required \(formats: arm-lpae-s1, arm-lpae-s2(, [a-z0-9-]+)*\)
