"""A script that asks its user something before training."""

answer = input("learning rate? ")
print("got", answer)
