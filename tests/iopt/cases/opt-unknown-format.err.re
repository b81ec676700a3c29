iopt: unknown format 'arm-lpae-s3' \(formats: arm-lpae-s1, arm-lpae-s2(, [a-z0-9-]+)*\)
