usage: iopt --format NAME .*Exit status: 0 done, 1 malformed script line, 2 bad command line\.
