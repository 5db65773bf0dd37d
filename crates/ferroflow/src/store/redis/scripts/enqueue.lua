for b = 2, #ARGV, 4 do enqueue(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]) end
return 0
